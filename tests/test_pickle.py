"""The tensor rebuilders shared by the restricted unpicklers (clipkit._pickle)."""
import pickle

import pytest
import torch

from clipkit._pickle import STORAGE_DTYPES, StorageType, storage_type, tensor_rebuilders
from clipkit.checkpoints import CheckpointError
from clipkit.generator.openai_dvae import read_pickled_state_dict

REBUILD = tensor_rebuilders(ValueError)[("torch._utils", "_rebuild_tensor_v2")]


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


@pytest.mark.parametrize("error", [CheckpointError, ValueError])
@pytest.mark.parametrize("offset,size,stride", [
    (0, (5, 5), (5, 1)),      # 25 elements from a storage of 20
    (16, (5,), (1,)),         # the offset pushes it past the end
    (0, (2, 2), (1,)),        # size and stride disagree
    (-1, (2,), (1,)),         # a negative offset
    (0, (2,), (-1,)),         # a negative stride
])
def test_a_record_that_does_not_fit_its_storage_raises_the_readers_error(error, offset, size, stride):
    rebuild = tensor_rebuilders(error)[("torch._utils", "_rebuild_tensor_v2")]
    with pytest.raises(error):
        rebuild(torch.zeros(20), offset, size, stride)


def test_empty_tensors_need_no_storage():
    assert REBUILD(torch.zeros(0), 0, (0, 7), (7, 1)).shape == (0, 7)


def test_v3_reinterprets_an_untyped_storage_as_the_dtype():
    raw = torch.tensor([1.5, -2.0], dtype=torch.float32).view(torch.uint8)
    v3 = tensor_rebuilders(ValueError)[("torch._utils", "_rebuild_tensor_v3")]
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
