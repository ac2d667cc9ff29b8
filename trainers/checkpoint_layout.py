"""What a prompt model saves and loads: only the tensors that train, under the names its method's official
code gives them.

So a checkpoint holds kilobytes to megabytes, never CLIP, and a checkpoint written by the official code
(CoOp's, or a released MaPLe model that holds all of CLIP) evaluates here: what such a file holds beyond
the trained tensors is left out with a note, and anything else that does not fit is named, every key.
"""
from torch import nn

# CoOp's prompt learners save the token embeddings around the context for *their* class names; a run
# rebuilds them for its own (the new classes of base-to-new), so they are never loaded.
CLASS_SET_BUFFERS = ("token_prefix", "token_suffix")


class TrainableStateDict(nn.Module):
    """Mixin for the module a prompt trainer registers.

    ``OFFICIAL_EXTRAS``: name prefixes of tensors the official code saves but this model does not hold
    (dead parameters, a second frozen encoder), left out on loading.
    """

    OFFICIAL_EXTRAS = ()

    def trainable_names(self):
        return [name for name, param in self.named_parameters() if param.requires_grad]

    def state_dict(self, *, destination=None, prefix="", keep_vars=False):
        full = super().state_dict(prefix=prefix, keep_vars=keep_vars)
        kept = type(full)((prefix + name, full[prefix + name]) for name in self.trainable_names())
        if destination is None:
            return kept
        destination.update(kept)
        return destination

    def load_state_dict(self, state_dict, strict=True, assign=False):
        state_dict, notes = self.drop_official_extras(state_dict)
        for note in notes:
            print(f"Note: {note}")
        wanted = set(self.trainable_names())
        missing = sorted(wanted - set(state_dict))
        unexpected = sorted(set(state_dict) - wanted)
        if strict and (missing or unexpected):
            raise RuntimeError(f"the checkpoint does not fit this {type(self).__name__}: missing keys {missing}; "
                               f"unexpected keys {unexpected}")
        loadable = {name: state_dict[name] for name in wanted & set(state_dict)}
        result = super().load_state_dict(loadable, strict=False, assign=assign)
        return type(result)(missing, unexpected)

    def drop_official_extras(self, state_dict):
        """(what to load, notes on what was left out)."""
        frozen = set(super().state_dict().keys()) - set(self.trainable_names())
        groups = {"class_set": [], "frozen": [], "extras": []}
        kept = {}
        for name, tensor in state_dict.items():
            if name.rsplit(".", 1)[-1] in CLASS_SET_BUFFERS:
                groups["class_set"].append(name)
            elif name in frozen:
                groups["frozen"].append(name)
            elif name.startswith(self.OFFICIAL_EXTRAS) and self.OFFICIAL_EXTRAS:
                groups["extras"].append(name)
            else:
                kept[name] = tensor
        notes = []
        if groups["class_set"]:
            notes.append(f"{', '.join(groups['class_set'])} from the checkpoint are not loaded: they are "
                         "rebuilt for this run's class names")
        if groups["frozen"]:
            notes.append(f"{len(groups['frozen'])} frozen tensors of the checkpoint (CLIP's weights) are not "
                         "loaded: this run's CLIP weights are used")
        if groups["extras"]:
            notes.append(f"{len(groups['extras'])} tensors the official code saves but never trains are not "
                         f"loaded ({', '.join(self.OFFICIAL_EXTRAS)})")
        return kept, notes
