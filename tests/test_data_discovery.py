"""Discovery: header sizes, EXIF, bad files, captions, and the incremental cache."""

from __future__ import annotations

import json
import os
import threading

import pytest
from PIL import Image

from simpletuner.data.captions import caption_from_filename
from simpletuner.data.discovery import DISCOVERY_FILE, discover, read_image_size
from simpletuner.data.schema import DatasetConfig
from simpletuner.errors import DataError


def _dataset(root, strategy="textfile", **extra) -> DatasetConfig:
    values = dict(
        id="photos",
        instance_data_dir=str(root / "images"),
        cache_dir_vae=str(root / "cache"),
        text_embeds=None,
        caption_strategy=strategy,
        instance_prompt=None,
        resolution=64,
        resolution_type="pixel_area",
        minimum_image_size=None,
        crop=False,
        crop_style="center",
        crop_aspect="square",
        repeats=0,
        probability=1.0,
        aspect_bucket_alignment=8,
    )
    values.update(extra)
    return DatasetConfig(**values)


def _save(path, size, fmt=None, caption="a photo", mode="RGB", **save_args):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, (200, 10, 10) if mode == "RGB" else None).save(path, fmt, **save_args)
    if caption is not None:
        path.with_suffix(".txt").write_text(caption, encoding="utf-8")


def _exif_rotated_jpeg(path, size, orientation=6):
    exif = Image.Exif()
    exif[0x0112] = orientation
    _save(path, size, "JPEG", exif=exif.tobytes())


class CountingReader:
    """Wraps the real header reader and records which files it read."""

    def __init__(self):
        self.paths = []
        self._lock = threading.Lock()

    def __call__(self, path):
        with self._lock:
            self.paths.append(os.path.basename(path))
        return read_image_size(path)


@pytest.fixture
def tree(tmp_path):
    images = tmp_path / "images"
    _save(images / "wide.png", (96, 48), caption="wide one")
    _save(images / "tall.jpg", (30, 90), caption="tall one")
    _save(images / "square.webp", (50, 50), caption="  square one \n")
    _save(images / "sub" / "deep.bmp", (40, 20), caption="deep one")
    _save(images / "alpha.png", (20, 20), mode="RGBA", caption="alpha")
    _exif_rotated_jpeg(images / "rotated.jpeg", (80, 40))
    (images / "rotated.txt").write_text("rotated one")
    _save(images / "uncaptioned.png", (32, 32), caption=None)
    (images / "empty.jpg").write_bytes(b"")
    (images / "empty.txt").write_text("empty")
    (images / "fake.jpg").write_text("this is not a jpeg")
    (images / "fake.txt").write_text("fake")
    (images / "notes.md").write_text("not an image extension")
    _save(images / ".hidden.png", (10, 10))
    _save(images / "latin1.png", (16, 16), caption=None)
    (images / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    return tmp_path


def test_finds_images_with_upright_sizes_and_captions(tree):
    result = discover(_dataset(tree), progress=False)
    by_path = {r.relative_path: r for r in result.records}
    assert sorted(by_path) == [r.relative_path for r in result.records]  # sorted output
    assert set(by_path) == {"alpha.png", "rotated.jpeg", "square.webp", "sub/deep.bmp", "tall.jpg", "wide.png"}
    assert (by_path["wide.png"].width, by_path["wide.png"].height) == (96, 48)
    assert (by_path["tall.jpg"].width, by_path["tall.jpg"].height) == (30, 90)
    assert (by_path["sub/deep.bmp"].width, by_path["sub/deep.bmp"].height) == (40, 20)
    assert by_path["square.webp"].caption == "square one"
    assert by_path["wide.png"].path == str(tree / "images" / "wide.png")
    assert by_path["wide.png"].size_bytes == (tree / "images" / "wide.png").stat().st_size
    # non-image extensions are not counted; the hidden image is found and skipped
    assert result.files_found == 11 == len(result.records) + result.skipped_count
    assert result.skipped["hidden file"] == [".hidden.png"]


def test_exif_orientation_swaps_width_and_height(tree):
    (record,) = [r for r in discover(_dataset(tree), progress=False).records if r.relative_path == "rotated.jpeg"]
    assert (record.width, record.height) == (40, 80)
    assert read_image_size(str(tree / "images" / "rotated.jpeg")) == (40, 80)


def test_orientation_without_swap_keeps_size(tmp_path):
    _exif_rotated_jpeg(tmp_path / "flipped.jpg", (80, 40), orientation=3)
    assert read_image_size(str(tmp_path / "flipped.jpg")) == (80, 40)


def test_bad_files_are_skipped_with_reasons(tree):
    result = discover(_dataset(tree), progress=False)
    assert result.skipped["empty file"] == ["empty.jpg"]
    assert result.skipped["not an image"] == ["fake.jpg"]
    assert result.skipped["no caption"] == ["uncaptioned.png"]
    assert result.skipped["caption not UTF-8"] == ["latin1.png"]
    assert "no caption: 1" in result.summary()


def test_filename_and_instanceprompt_strategies(tree):
    by_filename = discover(_dataset(tree, strategy="filename"), progress=False)
    captions = {r.relative_path: r.caption for r in by_filename.records}
    assert captions["uncaptioned.png"] == "uncaptioned"
    assert captions["sub/deep.bmp"] == "deep"
    prompt = discover(_dataset(tree, strategy="instanceprompt", instance_prompt="sks dog",
                               cache_dir_vae=str(tree / "cache2")), progress=False)
    assert {r.caption for r in prompt.records} == {"sks dog"}
    assert "no caption" not in prompt.skipped


@pytest.mark.parametrize(
    "name, caption",
    [
        ("photo_of_a_cat_0042.jpg", "photo of a cat"),
        ("a-red--car.png", "a red car"),
        ("IMG_1234.jpg", "IMG"),
        ("0042.png", "0042"),
        ("model_3_car.png", "model 3 car"),
    ],
)
def test_filename_caption_cleanup(name, caption):
    assert caption_from_filename(f"/data/{name}") == caption


def test_textfile_with_bom_is_read(tmp_path):
    _save(tmp_path / "images" / "bom.png", (16, 16), caption=None)
    (tmp_path / "images" / "bom.txt").write_bytes("\ufeffa caption".encode("utf-8"))
    (record,) = discover(_dataset(tmp_path), progress=False).records
    assert record.caption == "a caption"


def test_rerun_reads_only_new_and_changed_files(tree):
    dataset = _dataset(tree)
    first = CountingReader()
    result = discover(dataset, progress=False, reader=first, workers=4)
    assert sorted(first.paths) == sorted(
        ["wide.png", "tall.jpg", "square.webp", "deep.bmp", "alpha.png", "rotated.jpeg",
         "uncaptioned.png", "fake.jpg", "latin1.png"]
    )  # the empty file is skipped from its size alone
    assert result.header_reads == 9
    cache = json.loads((tree / "cache" / DISCOVERY_FILE).read_text())
    assert cache["files"]["wide.png"][2:] == [96, 48]
    assert cache["files"]["fake.jpg"][2:] == ["not an image"]

    second = CountingReader()
    again = discover(dataset, progress=False, reader=second)
    assert second.paths == []
    assert again.records == result.records
    assert again.skipped == result.skipped

    wide = tree / "images" / "wide.png"
    _save(wide, (48, 96), caption="now tall")
    stat = wide.stat()
    os.utime(wide, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10_000_000_000))
    _save(tree / "images" / "new.png", (24, 24), caption="new")
    (tree / "images" / "tall.jpg").unlink()
    third = CountingReader()
    changed = discover(dataset, progress=False, reader=third)
    assert sorted(third.paths) == ["new.png", "wide.png"]
    by_path = {r.relative_path: r for r in changed.records}
    assert (by_path["wide.png"].width, by_path["wide.png"].height) == (48, 96)
    assert by_path["wide.png"].caption == "now tall"  # captions are re-read every run
    assert "tall.jpg" not in by_path
    cache = json.loads((tree / "cache" / DISCOVERY_FILE).read_text())
    assert "tall.jpg" not in cache["files"] and "new.png" in cache["files"]
    assert [p for p in os.listdir(tree / "cache") if p.endswith(".tmp")] == []


def test_corrupt_cache_is_rebuilt(tree):
    dataset = _dataset(tree)
    discover(dataset, progress=False)
    (tree / "cache" / DISCOVERY_FILE).write_text("{ truncated")
    reader = CountingReader()
    result = discover(dataset, progress=False, reader=reader)
    assert len(reader.paths) == 9 and len(result.records) == 6
    json.loads((tree / "cache" / DISCOVERY_FILE).read_text())  # valid again


def test_cache_folder_inside_data_folder_is_not_scanned(tmp_path):
    images = tmp_path / "images"
    _save(images / "one.png", (16, 16))
    _save(images / "cache" / "leftover.png", (16, 16))
    dataset = _dataset(tmp_path, cache_dir_vae=str(images / "cache"))
    result = discover(dataset, progress=False)
    assert [r.relative_path for r in result.records] == ["one.png"]


def test_unicode_file_names(tmp_path):
    _save(tmp_path / "images" / "café_ünïcode_猫.png", (16, 16))
    dataset = _dataset(tmp_path)
    first = discover(dataset, progress=False)
    assert [r.relative_path for r in first.records] == ["café_ünïcode_猫.png"]
    reader = CountingReader()
    discover(dataset, progress=False, reader=reader)
    assert reader.paths == []


def test_decompression_bomb_is_skipped_not_fatal(tmp_path, monkeypatch):
    _save(tmp_path / "images" / "huge.png", (40, 40))
    _save(tmp_path / "images" / "fine.png", (8, 8))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # 1600 > 2 x 500 triggers the guard
    result = discover(_dataset(tmp_path), progress=False)
    assert [r.relative_path for r in result.records] == ["fine.png"]
    assert result.skipped == {"too large (decompression bomb guard)": ["huge.png"]}


def test_progress_bar_reports_to_stderr(tree, capsys):
    result = discover(_dataset(tree), progress=True)
    assert len(result.records) == 6
    assert "discovering photos" in capsys.readouterr().err


def test_unwritable_cache_dir_is_a_data_error(tree):
    (tree / "blocker").write_text("a file where a folder should be")
    dataset = _dataset(tree, cache_dir_vae=str(tree / "blocker" / "cache"))
    with pytest.raises(DataError, match="dataset 'photos'.*'cache_dir_vae'"):
        discover(dataset, progress=False)


def test_files_come_out_in_relative_path_order_without_a_final_sort(tmp_path):
    # The walk orders each folder's entries with "/" after folder names, so "a.png" (".") comes before
    # "a/x.png" ("/") and "a-/c.png" ("-") before both, as sorting the full paths would.
    names = ["a/x.png", "a.png", "a b.png", "a-/c.png", "a0.png", "b/a/z.png", "b.png", "b/a.png", "b/a b/y.png"]
    for name in names:
        (tmp_path / "images" / name).parent.mkdir(parents=True, exist_ok=True)
        _save(tmp_path / "images" / name, (8, 8))
    found = discover(_dataset(tmp_path), progress=False)
    assert [r.relative_path for r in found.records] == sorted(names)
    assert [r.path for r in found.records] == [os.path.join(str(tmp_path / "images"), *n.split("/")) for n in sorted(names)]
