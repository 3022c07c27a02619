"""The one restricted unpickler (clipkit.checkpoints.safe_pickle): its tensor rebuilders,
and its one error type whichever reader meets a hostile pickle."""
import pickle
import struct
import zipfile

import pytest
import torch

from clipkit.checkpoints import CheckpointError, read_torchscript_archive
from clipkit.checkpoints.safe_pickle import (STORAGE_DTYPES, PickleRefused, StorageType, storage_type,
                                             tensor_rebuilders)
from clipkit.generator import openai_dvae
from clipkit.generator.openai_dvae import read_pickled_state_dict

REBUILD = tensor_rebuilders()[("torch._utils", "_rebuild_tensor_v2")]


def test_rebuild_is_the_strided_view_torch_would_make():
    storage = torch.arange(20.0)
    t = REBUILD(storage, 3, (3, 4), (5, 1))
    assert torch.equal(t, storage[3:].as_strided((3, 4), (5, 1)))
    storage[3] = -1.0  # a view: the legacy reader fills storages after unpickling
    assert t[0, 0] == -1.0


def test_rebuild_counts_the_offset_from_the_start_of_a_storage_view():
    base = torch.arange(30.0)
    storage = base[10:20]  # a legacy storage view
    t = REBUILD(storage, 2, (2, 2), (2, 1))
    assert t.tolist() == [[12.0, 13.0], [14.0, 15.0]]


@pytest.mark.parametrize("offset,size,stride", [
    (0, (5, 5), (5, 1)),      # 25 elements from a storage of 20
    (16, (5,), (1,)),         # the offset pushes it past the end
    (0, (2, 2), (1,)),        # size and stride disagree
    (-1, (2,), (1,)),         # a negative offset
    (0, (2,), (-1,)),         # a negative stride
])
def test_a_record_that_does_not_fit_its_storage_is_refused(offset, size, stride):
    with pytest.raises(PickleRefused):
        REBUILD(torch.zeros(20), offset, size, stride)


def test_empty_tensors_need_no_storage():
    assert REBUILD(torch.zeros(0), 0, (0, 7), (7, 1)).shape == (0, 7)


def test_v3_reinterprets_an_untyped_storage_as_the_dtype():
    raw = torch.tensor([1.5, -2.0], dtype=torch.float32).view(torch.uint8)
    v3 = tensor_rebuilders()[("torch._utils", "_rebuild_tensor_v3")]
    assert v3(raw, 0, (2,), (1,), False, None, torch.float32).tolist() == [1.5, -2.0]


def test_storage_types():
    assert storage_type("torch", "HalfStorage").dtype == torch.float16
    assert storage_type("torch", "Tensor") is None and storage_type("os", "FloatStorage") is None
    assert all(isinstance(storage_type("torch", n), StorageType) for n in STORAGE_DTYPES)


def test_the_pickled_module_reader_rebuilds_strided_views_like_torch_load(tmp_path):
    base = torch.randn(6, 8)
    sd = {"view": base[1:, ::2], "t": base.t(), "half": base.half()[2:4]}
    path = tmp_path / "sd.pt"
    torch.save(sd, path)
    got = read_pickled_state_dict(path)
    ref = torch.load(path, weights_only=True)
    assert set(got) == set(ref)
    for k in ref:
        assert got[k].dtype == ref[k].dtype and torch.equal(got[k], ref[k]), k


def test_refused_pickle_is_still_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("ran",))

    path = tmp_path / "evil.pt"
    torch.save({"x": torch.zeros(1), "evil": Evil()}, path)
    with pytest.raises(pickle.UnpicklingError):
        read_pickled_state_dict(path)


def _calls(module: str, name: str, arg: str) -> bytes:
    """A protocol-2 pickle that calls module.name(arg) when loaded: GLOBAL, BINUNICODE, TUPLE1, REDUCE."""
    text = arg.encode()
    return b"\x80\x02c" + f"{module}\n{name}\n".encode() + b"X" + struct.pack("<I", len(text)) + text + b"\x85R."


def test_one_error_type_for_both_readers(tmp_path):
    assert issubclass(PickleRefused, CheckpointError) and issubclass(PickleRefused, pickle.UnpicklingError)
    assert openai_dvae.PickleRefused is PickleRefused  # the generator's name for it still works
    marker = tmp_path / "pwned"
    for module, name, arg in (("os", "system", f"touch {marker}"), ("builtins", "eval", f"open({str(marker)!r}, 'w')")):
        payload = _calls(module, name, arg)
        archive = tmp_path / f"{name}.pt"  # a TorchScript archive whose data.pkl is the payload
        with zipfile.ZipFile(archive, "w") as zf:
            zf.writestr("evil/data.pkl", payload)
            zf.writestr("evil/constants.pkl", pickle.dumps(()))
            zf.writestr("evil/code/__torch__.py", "")
        module_file = tmp_path / f"{name}.pkl"  # a torch.save zip archive whose data.pkl is the payload
        with zipfile.ZipFile(module_file, "w") as zf:
            zf.writestr("evil/data.pkl", payload)
        for read, path in ((read_torchscript_archive, archive), (read_pickled_state_dict, module_file)):
            with pytest.raises(PickleRefused, match=f"{module}\\.{name}") as info:
                read(path)
            assert type(info.value) is PickleRefused and str(path) in str(info.value)
    assert not marker.exists()


def test_the_pickled_module_reader_shares_the_archive_bounds(tmp_path, monkeypatch):
    path = tmp_path / "sd.pt"
    torch.save({"w": torch.zeros(1000), "again": torch.zeros(1000)}, path)
    monkeypatch.setattr(openai_dvae, "MAX_FILE_BYTES", 3999)
    with pytest.raises(PickleRefused, match="more than 3,999 bytes"):
        read_pickled_state_dict(path)
    monkeypatch.setattr(openai_dvae, "MAX_FILE_BYTES", 4000 * 2)
    assert read_pickled_state_dict(path)["w"].shape == (1000,)
