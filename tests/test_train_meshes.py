"""`train.py` on 1 simulated CPU device and on 8 laid out as (data, fsdp, tensor) = (8,1,1),
(2,4,1) and (2,2,2): the same losses. Then the checkpoints: trained on 8 devices and restored on
1, and the other way round."""

import jax
import numpy as np
import pytest

from tests.train_runner import TrainProcesses, finish, prepared_dir, train_losses  # noqa: F401
from training import partitioning, restoring

MESHES = [(8, 1, 1), (2, 4, 1), (2, 2, 2)]


@pytest.mark.slow  # a minute or more on a 2-core CPU: runs in `make test-slow`
def test_same_losses_on_1_and_8_devices_and_checkpoints_restore_anywhere(tmp_path, prepared_dir):  # noqa: F811
    overrides = {
        "num_train_steps": 3,
        "num_bleu_examples": 8,  # decoding with parameters sharded over the mesh, too
        "num_sample_translations": 0,
    }
    runs = {(1, 1, 1): 1, **{shape: 8 for shape in MESHES}}
    with TrainProcesses() as processes:
        started = {
            shape: processes.start(
                tmp_path / "x".join(map(str, shape)),
                prepared_dir,
                {**overrides, "mesh_shape": str(shape)},
                devices=devices,
            )
            for shape, devices in runs.items()
        }
        for shape, process in started.items():
            code, _, stderr = finish(process)
            assert code == 0, f"mesh {shape} failed:\n{stderr[-4000:]}"
            assert f"Mesh: data={shape[0]} fsdp={shape[1]} tensor={shape[2]}" in stderr

    reference = train_losses(tmp_path / "1x1x1")
    assert len(reference) == 3
    for shape in MESHES:
        losses = train_losses(tmp_path / "x".join(map(str, shape)))
        np.testing.assert_allclose(losses, reference, atol=1e-5, err_msg=f"mesh {shape}")

    # Trained on 8 devices (2,2,2) -> restored on this host's first device, and on a mesh.
    on_one_device = restoring.restore_for_translation(tmp_path / "2x2x2").params
    mesh = partitioning.make_mesh((1, 4, 2), jax.devices()[:8])
    restored = restoring.restore_for_translation(tmp_path / "2x2x2", mesh=mesh)
    on_a_mesh, tokenizer = restored.params, restored.tokenizer
    assert tokenizer.decode(tokenizer.encode("one hundred")) == "one hundred"
    for one, many in zip(jax.tree.leaves(on_one_device), jax.tree.leaves(on_a_mesh), strict=True):
        assert one.sharding.device_set == {jax.local_devices()[0]}
        assert len(many.sharding.device_set) == 8
        np.testing.assert_array_equal(np.asarray(one), np.asarray(many))
    embedding = on_a_mesh["source_embedding"]["embedding"]  # [vocab, embed]
    assert tuple(embedding.sharding.spec) == ("tensor", "fsdp")

    # Trained on 1 device -> restored on 8; it is (nearly) the same model as the 8-device run.
    from_one = restoring.restore_for_translation(tmp_path / "1x1x1" / "checkpoints", mesh=mesh)
    from_one = from_one.params
    for a, b in zip(jax.tree.leaves(from_one), jax.tree.leaves(on_a_mesh), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
