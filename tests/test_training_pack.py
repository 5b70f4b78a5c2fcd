"""``training.pack``: a prepared dataset cut to a size budget reads back as a dataset whose
crops, psi rows and d-vectors are the source's own."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_training_trainer import make_tiny_dataset

from stream.errors import InputError
from training.__main__ import main as training_main
from training.data import GE2E_CACHE, SPEAKER_DIR, DatasetIndex, ensure_ge2e_cache, read_crop
from training.pack import PACK_FILE, PackOptions, pack_dataset, sample_order


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("source")
    return make_tiny_dataset(root, {"train": 3, "test": 1}, {"train": 3}, crops_per_identity=4)


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def test_pack_reads_back_with_the_source_values(source: Path, tmp_path: Path) -> None:
    summary = pack_dataset(source, tmp_path / "pack", PackOptions(max_bytes=10 * 2**20))
    original = DatasetIndex.load(source)
    packed = DatasetIndex.load(tmp_path / "pack")
    assert original.psi is not None and packed.psi is not None
    assert summary.crops == summary.crops_available == 24  # 6 train identities x 4: all fit
    assert {r.split for r in packed.crops} == {"train"}
    by_image = {Path(r.image).stem: r for r in original.crops}
    for record in packed.crops:
        assert record.image.endswith(".jpg")
        source_record = by_image[Path(record.image).stem]
        assert source_record.psi_row is not None and record.psi_row is not None
        np.testing.assert_array_equal(
            packed.psi[record.psi_row], original.psi[source_record.psi_row]
        )
        # JPEG at quality 95: close to the lossless source, not identical.
        got = read_crop(tmp_path / "pack" / record.image).astype(int)
        want = read_crop(source / source_record.image).astype(int)
        assert 0 < np.abs(got - want).mean() < 3.0
    # Speech: records and d-vectors, no samples.
    assert len(packed.audio) == summary.audio_segments == 6  # 3 voiced train identities x 2
    assert not (tmp_path / "pack" / "audio").exists()
    # Complete: reading the cache embeds nothing (the speech samples it would read are gone).
    vectors = ensure_ge2e_cache(packed, progress=False)
    reference = ensure_ge2e_cache(original, progress=False)
    for i, record in enumerate(packed.audio):
        j = [r.audio for r in original.audio].index(record.audio)
        np.testing.assert_array_equal(vectors[i], reference[j])
    assert packed.paired_identities("train") == original.paired_identities("train")
    assert json.loads((tmp_path / "pack" / PACK_FILE).read_text())["summary"]["crops"] == 24


def test_budget_bounds_the_pack(source: Path, tmp_path: Path) -> None:
    full = pack_dataset(source, tmp_path / "full", PackOptions(max_bytes=10 * 2**20))
    budget = full.bytes // 2
    half = pack_dataset(source, tmp_path / "half", PackOptions(max_bytes=budget))
    assert 0 < half.crops < full.crops
    assert half.bytes == _folder_bytes(tmp_path / "half") <= budget
    # A prefix of one seeded order: the smaller pack's crops are all in the larger one.
    small = {r.image for r in DatasetIndex.load(tmp_path / "half").crops}
    assert small <= {r.image for r in DatasetIndex.load(tmp_path / "full").crops}


def test_png_mode_is_lossless(source: Path, tmp_path: Path) -> None:
    pack_dataset(source, tmp_path / "png", PackOptions(max_bytes=10 * 2**20, jpeg_quality=0))
    record = DatasetIndex.load(tmp_path / "png").crops[0]
    assert record.image.endswith(".png")
    original = next(r for r in DatasetIndex.load(source).crops if r.image == record.image)
    np.testing.assert_array_equal(
        read_crop(tmp_path / "png" / record.image), read_crop(source / original.image)
    )


def test_sample_order_is_seeded(source: Path) -> None:
    crops = DatasetIndex.load(source).crops
    first = sample_order(crops, 0)
    assert sorted(r.image for r in first) == sorted(r.image for r in crops)  # a permutation
    assert sample_order(crops, 0) == first
    assert sample_order(crops, 1) != first
    assert [r.image for r in first] != [r.image for r in crops]  # not the manifest order


def test_pack_errors(source: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no crop fits"):
        pack_dataset(source, tmp_path / "tiny", PackOptions(max_bytes=20_000))
    (tmp_path / "exists").mkdir()
    with pytest.raises(InputError, match="exists"):
        pack_dataset(source, tmp_path / "exists")
    with pytest.raises(ValueError, match="jpeg_quality"):
        PackOptions(jpeg_quality=101)


def test_missing_d_vectors_are_embedded_first(source: Path, tmp_path: Path) -> None:
    no_cache = tmp_path / "no_cache"
    shutil.copytree(source, no_cache)
    (no_cache / SPEAKER_DIR / GE2E_CACHE).unlink()
    summary = pack_dataset(no_cache, tmp_path / "out", PackOptions(max_bytes=10 * 2**20))
    vectors = ensure_ge2e_cache(DatasetIndex.load(tmp_path / "out"), progress=False)
    assert len(vectors) == summary.audio_segments == 6
    # GE2E d-vectors of the (noise) speech: unit length, not the fixture's random vectors.
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert (no_cache / SPEAKER_DIR / GE2E_CACHE).is_file()  # the source's cache, as training


def test_cli_pack(source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    assert training_main(["pack", str(source), "-o", str(out), "--max-mib", "5"]) == 0
    assert capsys.readouterr().out.startswith("packed 24/24 crops of 6/6 identities (3 with voice)")
    assert training_main(["pack", str(source), "-o", str(out)]) == 1  # exists
    assert (
        training_main(["pack", str(source), "-o", str(tmp_path / "x"), "--jpeg-quality", "-1"]) == 2
    )
