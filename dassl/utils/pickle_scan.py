"""A dry run of a checkpoint's pickle before ``torch.load`` unpickles it: nothing is built, so a file can
neither make the reader allocate without bound nor nest deeper than saving it again could handle.

Each opcode of the weights-only subset torch reads is followed on a stack of placeholder nodes (a kind and
the nodes it holds); the pickled classes Dassl.pytorch writes (``legacy_checkpoint.PICKLED_CLASSES``) must
be built exactly as ``pickle`` builds them (NEWOBJ without arguments, then one BUILD with a dict).
"""
import io
import pickletools
import zipfile

MAX_PICKLE_BYTES = 1 << 20  # ~150 bytes a tensor (its tensors are separate records): 7000 tensors
MAX_DEPTH = 64  # about 10 in real checkpoints; saving recurses once per level
ZIP_MAGIC = b"PK\x03\x04"  # how torch.load tells its zip format from the legacy one (a few pickles in a row)
LEGACY_PICKLES = 5  # torch's pre-zip format: magic number, protocol, sys info, the object, storage keys
ALLOCATORS = {"builtins.bytearray"}  # bytearray(n) allocates n bytes
LEAVES = {"NONE", "NEWFALSE", "NEWTRUE", "BININT", "BININT1", "BININT2", "BINFLOAT", "BINUNICODE",
          "SHORT_BINSTRING", "LONG1"}
CONTAINERS = {"EMPTY_LIST": "list", "EMPTY_DICT": "dict", "EMPTY_TUPLE": "tuple", "EMPTY_SET": "set"}
MAPPING_CALLS = {"collections.OrderedDict", "collections.Counter", "collections.defaultdict", "builtins.dict"}


class MalformedPickle(ValueError):
    """A pickle that an honest ``torch.save`` never writes; the message says what it does instead."""


class _Node:
    """A placeholder: what built it, and the nodes it holds (at most one per opcode, so its memory is
    bounded by the pickle's size; all plain values share one leaf)."""

    __slots__ = ("kind", "name", "items", "built")

    def __init__(self, kind, name="", items=()):
        self.kind, self.name, self.items, self.built = kind, name, list(items), False

    def describe(self):
        return f"a {self.kind} {self.name}".rstrip()


LEAF = _Node("value")


class _DryRun:
    """The unpickler's stack discipline with placeholders: refuses what no checkpoint holds."""

    def __init__(self, pickled_classes):
        self.pickled_classes = set(pickled_classes)
        self.stack, self.metastack, self.memo = [], [], {}

    def pop_mark(self):
        items, self.stack = self.stack, self.metastack.pop()
        return items

    def target(self, kind):
        """The list (APPEND) or dict (SETITEM) under the items; a dict may be one an allowed call made."""
        node = self.stack[-1]
        if node.kind != kind and not (kind == "dict" and node.kind == "call" and node.name in MAPPING_CALLS):
            raise MalformedPickle(f"it adds items to {node.describe()}")
        return node

    def step(self, name, arg):
        if name == "GLOBAL":
            full_name = arg.replace(" ", ".").replace("__builtin__.", "builtins.")  # protocol 2's name
            if full_name in ALLOCATORS:
                raise MalformedPickle(f"it calls {full_name}, which allocates as many bytes as the file asks")
            self.stack.append(_Node("global", full_name))
        elif name in LEAVES or name == "BINPERSID":
            if name == "BINPERSID":
                self.stack.pop()
            self.stack.append(LEAF)
        elif name in CONTAINERS:
            self.stack.append(_Node(CONTAINERS[name]))
        elif name == "MARK":
            self.metastack.append(self.stack)
            self.stack = []
        elif name == "TUPLE":
            items = self.pop_mark()
            self.stack.append(_Node("tuple", items=items))
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            count = int(name[-1])
            if len(self.stack) < count:
                raise IndexError("stack underflow")
            items = self.stack[-count:]
            del self.stack[-count:]
            self.stack.append(_Node("tuple", items=items))
        elif name in ("NEWOBJ", "REDUCE"):
            self.call(name)
        elif name == "BUILD":
            self.build()
        elif name in ("APPEND", "SETITEM"):
            items = [self.stack.pop() for _ in range(1 if name == "APPEND" else 2)]
            self.target("list" if name == "APPEND" else "dict").items.extend(items)
        elif name in ("APPENDS", "SETITEMS"):
            items = self.pop_mark()
            self.target("list" if name == "APPENDS" else "dict").items.extend(items)
        elif name in ("BINGET", "LONG_BINGET"):
            self.stack.append(self.memo[arg])
        elif name in ("BINPUT", "LONG_BINPUT"):
            self.memo[arg] = self.stack[-1]
        elif name != "PROTO":
            raise MalformedPickle(f"it uses the pickle opcode {name}, which torch.save never writes")

    def call(self, opcode):
        args = self.stack.pop()
        func = self.stack.pop()
        if func.kind != "global":
            raise MalformedPickle(f"it calls {func.describe()}")
        if args.kind != "tuple":
            raise MalformedPickle(f"it calls {func.name} with {args.describe()} as its arguments")
        if func.name in self.pickled_classes and (opcode == "REDUCE" or args.items):
            raise MalformedPickle(f"it builds its pickled {func.name} from arguments, which pickle never writes")
        if func.name in ("collections.defaultdict", "builtins.dict") and len(args.items) > 1:
            raise MalformedPickle(f"it calls {func.name} with {len(args.items)} arguments")
        kind = "object" if func.name in self.pickled_classes else "call"
        self.stack.append(_Node(kind, func.name, args.items))

    def build(self):
        state = self.stack.pop()
        node = self.stack[-1]
        if node.kind == "object":
            if node.built or state.kind != "dict":
                raise MalformedPickle(f"it sets the attributes of its pickled {node.name} twice or from "
                                      f"{state.describe()}")
            node.built = True
        elif node.kind != "call":
            raise MalformedPickle(f"it sets attributes of {node.describe()}")
        node.items.append(state)


def depth(root):
    """Levels of nesting below ``root`` (a shared node counts where it is deepest; a cycle adds none)."""
    depths, on_path, todo = {}, set(), [(root, False)]
    while todo:
        node, done = todo.pop()
        if done:
            on_path.discard(id(node))
            depths[id(node)] = 1 + max((depths.get(id(item), 0) for item in node.items), default=0)
        elif id(node) not in depths and id(node) not in on_path:
            on_path.add(id(node))
            todo.append((node, True))
            todo.extend((item, False) for item in node.items)
    return depths[id(root)]


def scan_pickle(stream, pickled_classes):
    """Dry-run one pickle from ``stream``; MalformedPickle (or ValueError from pickletools) if it is not a
    checkpoint's."""
    run = _DryRun(pickled_classes)
    try:
        for opcode, arg, _ in pickletools.genops(stream):
            if opcode.name == "STOP":
                break
            run.step(opcode.name, arg)
        root = run.stack.pop()
    except (IndexError, KeyError):
        raise MalformedPickle("it is not a checkpoint: its bytes are no pickle (an opcode takes a value that is "
                              "not there)") from None
    if depth(root) > MAX_DEPTH:
        raise MalformedPickle(f"it nests values more than {MAX_DEPTH} levels deep")


def scan_checkpoint(path, pickled_classes):
    """Dry-run every pickle ``torch.load`` would read from ``path``, within MAX_PICKLE_BYTES each."""
    with open(path, "rb") as handle:
        head = io.BytesIO(handle.read(MAX_PICKLE_BYTES))
    if head.getvalue().startswith(ZIP_MAGIC):
        with zipfile.ZipFile(path) as archive:  # zipfile.BadZipFile: a truncated or damaged file
            for info in archive.infolist():
                if not info.filename.endswith(".pkl"):
                    continue
                if info.compress_type != zipfile.ZIP_STORED or info.file_size > MAX_PICKLE_BYTES:
                    raise MalformedPickle(f"its pickle {info.filename} is compressed or larger than any "
                                          f"checkpoint's ({info.file_size} bytes)")
                with archive.open(info) as stream:
                    scan_pickle(io.BytesIO(stream.read()), pickled_classes)
        return
    for _ in range(LEGACY_PICKLES):
        if head.tell() == len(head.getbuffer()):
            return
        scan_pickle(head, pickled_classes)
