"""A clean-room implementation of the Dassl.pytorch API subset that CoOp-family code uses."""
__version__ = "0.6.3+mupl"
