"""The learning-curve benchmark's plan: which slices are annotated, what pretraining may read, and
that every method of a cell gets the same slices and the same wall time (the benchmark itself is not a test)."""

from __future__ import annotations

from pathlib import Path

from sam4em.training.config import config_from_dict
from sam4em.workflows.benchmark import dataset_plans
from sam4em.workflows.learning_curve import (
    CURVE_METHODS,
    CURVE_PROFILES,
    GENERALIST_SOURCES,
    _generalist_outcome,
    annotated_slices,
    encoder_folder,
    finetune_config,
    generalist_config,
    pretraining_volumes,
)


def test_annotated_slices_stay_in_the_training_volume_and_out_of_the_test_slices(data_dir):
    plans = dataset_plans(data_dir, full_test=False)
    # Lucchi++: 165 training slices, validation 140-164 after a gap of one clip (4): training 0-135.
    assert annotated_slices(plans["lucchi_pp"], 1) == ([68, 152], 1)
    assert annotated_slices(plans["lucchi_pp"], 2) == ([34, 102, 152], 2)
    slices, count = annotated_slices(plans["lucchi_pp"], 0)
    assert count == 136 and slices == [*range(136), *range(140, 165)]
    # VNC: slices 0-6 train (7-9 are the test slices), validation 5-6 after a gap of 2: training 0-2.
    assert annotated_slices(plans["vnc"], 1) == ([1, 6], 1)
    assert annotated_slices(plans["vnc"], 5) is None
    assert annotated_slices(plans["vnc"], 0) == ([0, 1, 2, 5, 6], 3)


def test_pretraining_reads_no_test_volume(data_dir):
    volumes = pretraining_volumes(data_dir)
    assert not any("test_image" in v or "test_label" in v for v in volumes)
    assert f"{data_dir / 'vnc' / 'stack1_z00-09.h5'}:raw@0-7" in volumes  # VNC test slices 7-9 excluded
    assert all(Path(v.split(":")[0].split("@")[0]).exists() for v in volumes)


def test_methods_of_a_cell_share_slices_and_wall_time(data_dir, tmp_path):
    plan = dataset_plans(data_dir, full_test=False)["vnc"]
    profile = CURVE_PROFILES["learning-curve"]
    configs = {m: config_from_dict(finetune_config(plan, m, [2, 6], profile, tmp_path / "encoder")) for m in CURVE_METHODS}
    assert configs["sam4em-gen-full"].model.base == str(tmp_path / "encoder") and configs["sam4em-gen-full"].model.build.finetune == "full"
    assert configs["sam4em-em-llrd"].stage1.layer_decay == 0.75 and configs["sam4em-em-full"].stage1.layer_decay == 1.0
    assert configs["sam4em-gen-init"].init_from == str(tmp_path / "run") and configs["sam4em-gen-full"].init_from is None
    assert {tuple(c.volumes[0].labelled_slices) for c in configs.values()} == {(2, 6)}
    for config in configs.values():
        seconds = sum(getattr(config, f"stage{s}").max_seconds for s in config.stages_to_run)
        assert seconds == profile.finetune_seconds
    assert configs["sam4em-em"].model.base == str(tmp_path / "encoder") and configs["sam4em-em"].model.build.finetune == "lora"
    assert configs["sam4em-scratch"].model.base == "cpu-small"
    shared = {m for m, c in configs.items() if c.model.build.shared_memory and c.model.build.joint_detail}
    assert shared == {"sam4em-scratch-shared", "sam4em-gen-init-shared", "sam4em-scratch-joint", "sam4em-gen-init-joint"}
    assert {m for m, c in configs.items() if c.model.build.joint_decoder} == {"sam4em-scratch-joint", "sam4em-gen-init-joint"}
    assert configs["sam4em-gen-init-shared"].init_from == configs["sam4em-gen-init-joint"].init_from == configs["sam4em-gen-init"].init_from


def test_generalist_encoders_never_see_the_target_or_a_test_slice(data_dir, tmp_path):
    plans = dataset_plans(data_dir, full_test=False)
    profile = CURVE_PROFILES["learning-curve"]
    for target, sources in GENERALIST_SOURCES.items():
        assert target not in sources and set(sources) <= set(plans)
        for source in sources:
            plan = plans[source]
            config = config_from_dict(generalist_config(plan, "cpu-small", profile.generalist_seconds / len(sources), profile))
            volume = config.volumes[0]
            assert volume.labelled_slices is None
            if volume.image == plan.test_image:  # VNC and ISBI: test slices lie after the training part
                assert volume.z_range is not None and volume.z_range[1] <= plan.test_crop[0][0]
            else:  # Lucchi++: a training file and a test file
                assert Path(volume.image).name == "train_image.tif"
            assert config.stages_to_run == [1] and config.model.build.finetune == "full"
    # A generalist run starts from the encoder the target's last part exported; from-scratch runs from none.
    assert encoder_folder(tmp_path, "sam4em-gen", "vnc") == (tmp_path / "pretrain" / "generalist-vnc" / "1-lucchi_pp" / "encoder").resolve()
    assert encoder_folder(tmp_path, "sam4em-scratch", "vnc") is None


def test_a_generalist_is_trained_part_after_part_and_ends_as_the_encoder_runs_start_from(tmp_path, one_thread):
    """Two parts on small synthetic stacks: the second starts from the encoder the first exported, and the
    last part's encoder is where `encoder_folder` points a generalist run."""
    import dataclasses

    import numpy as np
    import tifffile
    import yaml

    from sam4em.workflows.benchmark import DatasetPlan
    from sam4em.workflows.learning_curve import _generalist_worker

    rng = np.random.default_rng(0)
    plans = []
    for name in ("isbi2012", "lucchi_pp"):
        image = rng.integers(0, 255, (6, 256, 256), dtype=np.uint8)
        tifffile.imwrite(tmp_path / f"{name}.tif", image, photometric="minisblack")
        tifffile.imwrite(tmp_path / f"{name}_labels.tif", np.where(image > 128, 255, 0).astype(np.uint8), photometric="minisblack")
        plans.append(DatasetPlan(name=name, classes="thing=255", train_image=str(tmp_path / f"{name}.tif"),
                                 train_labels=str(tmp_path / f"{name}_labels.tif"), train_z=None, test_image="", test_labels="",
                                 test_crop=((0, 1), (0, 1), (0, 1)), voxel_size=(1.0, 1.0, 1.0), clip_length=2, val_fraction=0.3))
    profile = dataclasses.replace(CURVE_PROFILES["learning-curve-quick"], generalist_seconds=2.0, batch_size=1)
    encoder = tmp_path / "pretrain" / "generalist-vnc" / "1-lucchi_pp" / "encoder"
    _generalist_worker(plans, encoder, profile)
    assert (encoder / "encoder.safetensors").is_file()
    second = yaml.safe_load((encoder.parent / "run" / "config.yaml").read_text())["train"]["model"]["base"]
    assert second == str(tmp_path / "pretrain" / "generalist-vnc" / "0-isbi2012" / "encoder")
    assert "isbi2012 (" in _generalist_outcome(tmp_path / "pretrain" / "generalist-vnc")
