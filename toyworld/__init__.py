"""A procedurally drawn vision-language world for the demo: coloured shapes with captions."""
