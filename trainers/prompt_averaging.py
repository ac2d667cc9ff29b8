"""Gaussian prompt aggregation (PromptSRC's GPA): the deployed prompts are a Gaussian-weighted average of
the prompts at the end of every epoch, weights N(e; mean, std) over epochs e = 1 .. E, normalised to 1."""
import math


def gaussian_epoch_weights(max_epoch, mean, std):
    densities = [math.exp(-((epoch - mean) ** 2) / (2 * std ** 2)) / (std * math.sqrt(2 * math.pi))
                 for epoch in range(1, max_epoch + 1)]
    total = sum(densities)
    if total == 0:
        raise ValueError(f"GPA_MEAN {mean} and GPA_STD {std} put no weight on epochs 1 .. {max_epoch}")
    return [density / total for density in densities]


class GaussianPromptAverage:
    """Running weighted sum of a module's state; loaded into it after the last epoch. Its state
    (``state_dict``) is checkpointed with the run, so a resumed run aggregates exactly as an uninterrupted one."""

    def __init__(self, max_epoch, mean, std):
        self.weights = gaussian_epoch_weights(max_epoch, mean, std)
        self.total = None

    def add(self, epoch, state):
        """After epoch ``epoch`` (0-based) ends; on the last one the average replaces the module's state."""
        weighted = {name: self.weights[epoch] * tensor.detach().clone() for name, tensor in state.items()}
        if self.total is None:
            self.total = weighted
        else:
            self.total = {name: self.total[name] + value for name, value in weighted.items()}
        return self.total if epoch + 1 == len(self.weights) else None

    def state_dict(self):
        return {"total": self.total}

    def load_state_dict(self, state):
        self.total = state["total"]
