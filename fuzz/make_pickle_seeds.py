#!/usr/bin/env python3
"""Seeds for the `pickle` fuzz target: small PyTorch zip checkpoints, written without PyTorch.

Reads the tiny official-layout safetensors that `make_fuzz_seeds` (tests/fuzz_corpus.rs) leaves
in fuzz/seeds-raw/, and writes the same state dicts as `torch.save` would (a zip with
archive/data.pkl, pickle protocol 2, and one storage file per tensor) into
fuzz/corpus/pickle/seed-*: plain, under 'ema', with a strided (transposed) view, fp16, and a
compressed (deflate) archive. Usage: python3 fuzz/make_pickle_seeds.py
"""
import collections, json, os, pickle, struct, sys, types, zipfile

HERE = os.path.dirname(os.path.abspath(__file__))

# A stand-in `torch` module, so pickle writes the globals torch.save writes.
torch = types.ModuleType("torch")
utils = types.ModuleType("torch._utils")
def _rebuild_tensor_v2(*args):
    raise RuntimeError("never called")
_rebuild_tensor_v2.__module__ = "torch._utils"
utils._rebuild_tensor_v2 = _rebuild_tensor_v2
torch._utils = utils
STORAGES = {}
for name in ["FloatStorage", "HalfStorage", "BFloat16Storage", "DoubleStorage"]:
    cls = type(name, (), {})
    cls.__module__ = "torch"
    setattr(torch, name, cls)
    STORAGES[name] = cls
sys.modules["torch"] = torch
sys.modules["torch._utils"] = utils


class Storage:
    def __init__(self, cls, key, numel):
        self.cls, self.key, self.numel = cls, key, numel


class T:
    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, tuple(size), tuple(stride), False, collections.OrderedDict())

    def __reduce__(self):
        return (_rebuild_tensor_v2, self.args)


class Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            return ("storage", obj.cls, obj.key, "cpu", obj.numel)
        return None


def read_safetensors(path):
    data = open(path, "rb").read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    out = []
    for name, e in header.items():
        if name == "__metadata__":
            continue
        a, b = e["data_offsets"]
        out.append((name, e["dtype"], e["shape"], data[8 + n + a:8 + n + b]))
    return out


def contiguous_stride(shape):
    s, acc = [], 1
    for d in reversed(shape):
        s.append(acc)
        acc *= d
    return list(reversed(s))


def write_pt(path, tensors, key=None, transpose_first_2d=False, half=False, compress=False):
    storages, state = {}, collections.OrderedDict()
    for i, (name, dtype, shape, raw) in enumerate(tensors):
        assert dtype == "F32"
        vals = struct.unpack("<%df" % (len(raw) // 4), raw)
        size, stride = list(shape), contiguous_stride(shape)
        if transpose_first_2d and len(shape) == 2:
            # store the transpose's values; the view reads them back transposed (strided)
            r, c = shape
            vals = [vals[x * c + y] for y in range(c) for x in range(r)]
            stride = [1, r]
            transpose_first_2d = False
        if half:
            data, cls = struct.pack("<%de" % len(vals), *vals), STORAGES["HalfStorage"]
        else:
            data, cls = struct.pack("<%df" % len(vals), *vals), STORAGES["FloatStorage"]
        storages[str(i)] = data
        state[name] = T(Storage(cls, str(i), len(vals)), 0, size, stride)
    obj = {key: state, "epoch": 3} if key else state
    import io
    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump(obj)
    mode = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", mode) as z:
        z.writestr("archive/data.pkl", buf.getvalue())
        z.writestr("archive/byteorder", "little")
        for k, v in storages.items():
            z.writestr("archive/data/" + k, v)
        z.writestr("archive/version", "3\n")


def write_raw(path, views):
    """A checkpoint of views (name, size, stride, offset) on one 4-element float storage."""
    storage = Storage(STORAGES["FloatStorage"], "0", 4)
    state = collections.OrderedDict((name, T(storage, off, size, stride)) for name, size, stride, off in views)
    import io
    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump(state)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", buf.getvalue())
        z.writestr("archive/data/0", struct.pack("<4f", 1, 2, 3, 4))
        z.writestr("archive/version", "3\n")


def main():
    raw, out = os.path.join(HERE, "seeds-raw"), os.path.join(HERE, "corpus", "pickle")
    os.makedirs(out, exist_ok=True)
    dit = read_safetensors(os.path.join(raw, "official-dit.safetensors"))
    sparse = read_safetensors(os.path.join(raw, "official-sparse.safetensors"))
    write_pt(os.path.join(out, "seed-dit.pt"), dit)
    write_pt(os.path.join(out, "seed-dit-ema-strided.pt"), dit, key="ema", transpose_first_2d=True)
    write_pt(os.path.join(out, "seed-sparse-half-model.pt"), sparse, key="model", half=True)
    write_pt(os.path.join(out, "seed-small-deflate.pt"), dit[:3], key="state_dict", compress=True)
    # Regression inputs (tests/fuzz_corpus.rs): shapes that claim far more than their storage.
    reg = os.path.join(HERE, "regressions", "pickle")
    os.makedirs(reg, exist_ok=True)
    write_raw(os.path.join(reg, "huge-contiguous.pt"), [("a", [1 << 30, 16], [16, 1], 0)])
    write_raw(os.path.join(reg, "huge-broadcast.pt"), [("a", [1 << 30, 16], [0, 0], 0)])
    write_raw(os.path.join(reg, "huge-fortran.pt"), [("a", [1 << 17, 1 << 17], [1, 1 << 17], 0)])
    write_raw(os.path.join(reg, "past-storage.pt"), [("a", [2, 2], [1, 2], 1)])
    # a pickle string claiming 4 GiB (the fuzzer's find, rebuilt with a valid checksum)
    with zipfile.ZipFile(os.path.join(reg, "string-length-4g.pt"), "w") as z:
        z.writestr("archive/data.pkl", b"\x80\x02X\xff\xff\xff\xffabc.")


if __name__ == "__main__":
    main()
