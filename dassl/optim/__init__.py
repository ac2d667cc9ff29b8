from .lr_scheduler import build_lr_scheduler
from .optimizer import build_optimizer
