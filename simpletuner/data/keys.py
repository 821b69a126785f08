"""Every key a multidatabackend.json dataset object may carry, declared once.

Each key is one :class:`~simpletuner.config.option.Option`, the record the
main option table uses, so coercion (``"true"``, ``"1024"``), choices,
bounds, aliases (``centre``) and "not implemented yet" behave exactly as they
do for command-line options, and ``documentation/DATALOADER_KEYS.md`` is
generated from this table (``python -m simpletuner.config.docgen``).
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

from simpletuner.config.option import Option

GROUP_IDENTITY = "identity"
GROUP_WHERE = "location"
GROUP_SIZE = "size and shape"
GROUP_CROP = "cropping"
GROUP_CAPTIONS = "captions"
GROUP_SAMPLING = "sampling"
GROUP_DISCOVERY = "discovery and caches"

_NOT_YET = "Not implemented yet."


def _key(name: str, kind: str, default: Any, help: str, group: str, **extra: Any) -> Option:
    return Option(name=name, kind=kind, default=default, help=help, group=group, **extra)


def _later(name: str, kind: str, default: Any, help: str, group: str, **extra: Any) -> Option:
    """A SimpleTuner key we recognise but cannot honour yet: only its default passes."""
    return _key(name, kind, default, f"{help} {_NOT_YET}", group, implemented=False, **extra)


DATASET_KEYS: Tuple[Option, ...] = (
    # --- identity and kind -------------------------------------------------
    _key("id", "str", None, "Unique name of the dataset; used in logs, reports and cache keys.",
         GROUP_IDENTITY),
    _key("type", "str", "local", "Where the files live: `local` folder, `aws` (S3) bucket, `csv` URL list or "
         "`huggingface` dataset (see dataset_name).",
         GROUP_IDENTITY, choices=("local", "aws", "csv", "huggingface")),
    _key("dataset_type", "str", "image",
         "`image` for training images (or held-out evaluation images, when `--eval_dataset_id` names it), "
         "`text_embeds` for a text-embedding cache, "
         "`image_embeds` for a latent (image-embedding) cache image datasets can name.",
         GROUP_IDENTITY, choices=("image", "text_embeds", "image_embeds")),
    _key("default", "bool", False,
         "On a text_embeds dataset: image datasets without `text_embeds` use this one.", GROUP_IDENTITY),
    _key("disabled", "bool", False, "Leave the dataset out of the run without deleting its entry.",
         GROUP_IDENTITY),
    _key("text_embeds", "str", None,
         "Id of the text_embeds dataset whose cache this image dataset uses; default: the default one.",
         GROUP_IDENTITY),
    _key("image_embeds", "str", None, "Id of the image_embeds dataset this image dataset keeps its latents "
         "in (under `<its cache_dir>/<this id>/`); default: `<cache_dir_vae>/latents/`.", GROUP_IDENTITY),
    # --- where ---------------------------------------------------------------
    _key("instance_data_dir", "path", None,
         "Folder holding the images (searched recursively); relative paths start at the working directory. "
         "Local datasets only (type aws uses aws_bucket_name and aws_data_prefix).",
         GROUP_WHERE),
    _key("cache_dir_vae", "path", None,
         "Folder for this dataset's latent cache (unless it names an `image_embeds` dataset) and discovery "
         "metadata; one per dataset. With type aws it may be an `s3://bucket/prefix` location.", GROUP_WHERE),
    _key("cache_dir", "path", None, "On a text_embeds or image_embeds dataset: folder for its cache (with "
         "type aws: an `s3://bucket/prefix` location).", GROUP_WHERE),
    _key("aws_bucket_name", "str", None,
         "With type aws: the S3 bucket holding the images (required); on a text_embeds or image_embeds "
         "dataset, its cache.", GROUP_WHERE),
    _key("aws_region_name", "str", None, "With type aws: the bucket's region; default: boto3's (AWS_DEFAULT_REGION, "
         "profile).", GROUP_WHERE),
    _key("aws_endpoint_url", "str", None,
         "With type aws: URL of an S3-compatible server (MinIO, R2, ...); default: AWS.", GROUP_WHERE),
    _key("aws_access_key_id", "str", None,
         "With type aws: access key id; without it (and the secret) boto3's environment/profile chain is used.",
         GROUP_WHERE, secret=True),
    _key("aws_secret_access_key", "str", None, "With type aws: secret access key, set together with "
         "aws_access_key_id.", GROUP_WHERE, secret=True),
    _key("aws_data_prefix", "str", None,
         "With type aws: key prefix of the images inside the bucket (empty: the whole bucket); on a "
         "text_embeds or image_embeds dataset without cache_dir, where its cache goes.", GROUP_WHERE),
    _key("csv_file", "path", None, "With type csv: the CSV file listing image URLs (http, https or file), "
         "one per row, with a header row.", GROUP_WHERE),
    _key("csv_url_column", "str", "url", "With type csv: the column holding the URLs.", GROUP_WHERE),
    _key("csv_caption_column", "str", None, "With type csv: a column of captions, saved as .txt files "
         "beside the downloads (use caption_strategy textfile).", GROUP_WHERE),
    _key("csv_cache_dir", "path", None, "With type csv: the folder images are downloaded to once; it then "
         "serves as the dataset's folder.", GROUP_WHERE),
    _key("dataset_name", "str", None, "With type huggingface: a hub dataset id (`owner/name`), a folder "
         "written by `save_to_disk`, or a folder of parquet (or other) data files `load_dataset` reads.",
         GROUP_WHERE),
    _key("split", "str", "train", "With type huggingface: the split to train on.", GROUP_WHERE),
    _key("revision", "str", None, "With type huggingface: the hub revision (branch, tag or commit) to load.",
         GROUP_WHERE),
    _key("image_column", "str", "image", "With type huggingface: the column holding the images (an Image "
         "feature or raw bytes).", GROUP_WHERE),
    _key("width_column", "str", None, "With type huggingface: a column of image widths; with height_column "
         "the sizes come from the table and discovery reads no image byte.", GROUP_WHERE),
    _key("height_column", "str", None, "With type huggingface: a column of image heights (see width_column).",
         GROUP_WHERE),
    _key("num_proc", "int", None, "With type huggingface: processes `load_dataset` uses to prepare data "
         "files on first load.", GROUP_WHERE, minimum=1),
    # --- size and shape --------------------------------------------------------
    _key("resolution", "float", 1024,
         "Training size: in whole pixels the square edge for `pixel_area` (at least 8), the shorter edge "
         "for `pixel`; in megapixels (e.g. 1.0) for `area`.",
         GROUP_SIZE, minimum=0),
    _key("resolution_type", "str", "pixel_area",
         "`pixel_area`: images keep their aspect at about resolution² pixels; `pixel`: the shorter "
         "edge becomes resolution; `area` (deprecated): `pixel_area` with the size keys in megapixels, "
         "v megapixels being an edge of sqrt(v·1,000,000) pixels.",
         GROUP_SIZE, choices=("pixel", "pixel_area", "area")),
    _key("minimum_image_size", "float", None,
         "Skip smaller images: shorter edge for `pixel`, sqrt(width·height) for `pixel_area`, "
         "megapixels for `area`.",
         GROUP_SIZE, minimum=0),
    _key("maximum_image_size", "float", None,
         "With crop: images larger than this (same measure as minimum_image_size) are first "
         "downsampled to target_downsample_size, so the crop keeps more of the scene.",
         GROUP_SIZE, minimum=0),
    _key("target_downsample_size", "float", None,
         "The size (same measure) images above maximum_image_size are downsampled to before cropping.",
         GROUP_SIZE, minimum=0),
    _key("minimum_aspect_ratio", "float", None, "Skip images whose width / height is below this.",
         GROUP_SIZE, minimum=0.0),
    _key("maximum_aspect_ratio", "float", None, "Skip images whose width / height is above this.",
         GROUP_SIZE, minimum=0.0),
    _key("aspect_bucket_alignment", "int", 64,
         "Bucket edges are multiples of this many pixels (64 suits most VAEs and patch sizes).",
         GROUP_SIZE, minimum=1),
    # --- cropping --------------------------------------------------------------
    _key("crop", "bool", False,
         "Crop images to the bucket instead of resizing them to cover it and trimming the centre.",
         GROUP_CROP),
    _key("crop_style", "str", "random",
         "Where the crop window goes: `center` (or `centre`), `corner` (lowest-right), `random` "
         "(fixed per image, the same on every run whatever --seed is), `face` (centred on the largest "
         "detected face).",
         GROUP_CROP, choices=("center", "corner", "random", "face"), aliases={"centre": "center"}),
    _key("crop_aspect", "str", "square",
         "Shape of the crop: `square`, `preserve` (the image's own aspect bucket), `closest` (the "
         "crop_aspect_buckets ratio nearest the image's) or `random` (one of them, per image).",
         GROUP_CROP, choices=("square", "preserve", "closest", "random")),
    _key("aspect_resolution_map", "path", None,
         "Your own bucket sizes for some aspect ratios: an object like {\"1.46\": [1216, 832]} (keys are "
         "width / height to two decimals) or the path of a JSON file holding one, in SimpleTuner's "
         "aspect_ratio_map format. Listed aspects take the given size; others keep the computed bucket; "
         "square crops always use resolution.", GROUP_SIZE),
    _key("crop_aspect_buckets", "list", None,
         "Aspect ratios (width / height) that crop_aspect closest and random choose from.", GROUP_CROP),
    # --- captions ----------------------------------------------------------------
    _key("caption_strategy", "str", "filename",
         "Where captions come from: `textfile` (image.txt beside the image), `filename` (cleaned-up "
         "file name), `instanceprompt` (instance_prompt for every image), `parquet` (a table), `huggingface` "
         "(caption_column of a type huggingface dataset).",
         GROUP_CAPTIONS, choices=("textfile", "filename", "parquet", "instanceprompt", "huggingface")),
    _key("instance_prompt", "str", None,
         "Caption used by caption_strategy instanceprompt, only_instance_prompt and "
         "prepend_instance_prompt.", GROUP_CAPTIONS),
    _key("prepend_instance_prompt", "bool", False, "Put instance_prompt before every caption.",
         GROUP_CAPTIONS),
    _key("only_instance_prompt", "bool", False, "Use instance_prompt instead of every caption.",
         GROUP_CAPTIONS),
    _key("parquet", "str", None,
         "Block naming the parquet or JSON Lines table and its columns: path, filename_column, "
         "caption_column, fallback_caption_column, width_column, height_column, "
         "identifier_includes_extension.", GROUP_CAPTIONS),
    _key("caption_filter_list", "path", None,
         "File (or inline list) of literal strings, regexes and s/x/y/ replacements applied to "
         "captions; on a text_embeds dataset it applies to every image dataset using that cache.",
         GROUP_CAPTIONS),
    _key("remove_common_llm_caption_prefixes", "bool", False,
         "Drop openings captioning models add, such as \"The image shows\" or \"This image depicts\".",
         GROUP_CAPTIONS),
    _key("caption_column", "str", None, "With type huggingface: the caption column; a list of columns (the "
         "first non-empty one wins), or a dotted path into a nested column (`meta.caption`).", GROUP_CAPTIONS),
    _key("fallback_caption_column", "str", None, "With type huggingface: the column (or dotted path) used "
         "when caption_column is empty in a row.", GROUP_CAPTIONS),
    # --- sampling -------------------------------------------------------------------
    _key("repeats", "int", 0,
         "Extra passes per epoch: each image is seen 1 + repeats times an epoch.", GROUP_SAMPLING,
         minimum=0),
    _key("probability", "float", 1.0,
         "Relative weight of this dataset when datasets are mixed; 0 leaves it out of sampling.",
         GROUP_SAMPLING, minimum=0.0),
    _key("is_regularisation_data", "bool", False,
         "Mark the dataset as regularisation images; every sample carries the flag (also spelt "
         "is_regularization_data).", GROUP_SAMPLING),
    _key("is_regularization_data", "bool", False, "American spelling of is_regularisation_data.",
         GROUP_SAMPLING),
    _key("ignore_epochs", "bool", False,
         "The dataset does not decide when an epoch ends; it is sampled by weight until the others "
         "are done, continuing where it stopped next epoch.", GROUP_SAMPLING),
    # --- discovery and caches -----------------------------------------------------
    _key("skip_file_discovery", "list", None,
         "Start-up checks to skip when you know nothing changed: `aspect` or `metadata` trust the saved "
         "file list (like preserve_data_backend_cache), `vae` and `text` assume every latent / text-embed "
         "cache entry exists. Comma- or space-separated.", GROUP_DISCOVERY,
         choices=("vae", "aspect", "text", "metadata")),
    _key("preserve_data_backend_cache", "bool", False,
         "Trust the saved file list: do not re-list the folder at start-up (new files are not seen).",
         GROUP_DISCOVERY),
    _key("hash_filenames", "bool", False,
         "Accepted for SimpleTuner compatibility; cache files are always named by a hash, so it has "
         "no effect.", GROUP_DISCOVERY),
    _key("metadata_backend", "str", "discovery",
         "`discovery` reads image sizes from the files; `parquet` takes them from the parquet "
         "block's width_column and height_column; `huggingface` (type huggingface) takes them from "
         "width_column/height_column when set, else from the image bytes' headers.", GROUP_DISCOVERY,
         choices=("discovery", "parquet", "huggingface")),
    _key("scan_for_errors", "bool", False,
         "Load and check every latent cache entry at start (readable, finite, the shape its image's "
         "bucket needs); --vae_cache_scan_behaviour decides what happens to bad ones.", GROUP_DISCOVERY),
    _key("vae_cache_clear_each_epoch", "bool", False,
         "With random crops: at each new epoch delete the dataset's latents and encode fresh crop windows "
         "(the VAE stays loaded during training for this). Needs crop true and crop_style random.",
         GROUP_DISCOVERY),
    _later("cache_file_suffix", "str", None, "Suffix added to cache file names.", GROUP_DISCOVERY),
    _key("write_batch_size", "int", 128,
         "Accepted for SimpleTuner compatibility; cache writes are batched automatically, so it has "
         "no effect.", GROUP_DISCOVERY, minimum=1),
)

KEYS_BY_NAME: Dict[str, Option] = {option.name: option for option in DATASET_KEYS}

# Global options whose values are the defaults of same-named dataset keys.
GLOBAL_DEFAULT_KEYS: Tuple[str, ...] = (
    "resolution",
    "resolution_type",
    "crop",
    "crop_style",
    "crop_aspect",
    "crop_aspect_buckets",
    "caption_strategy",
    "minimum_image_size",
    "aspect_bucket_alignment",
    "preserve_data_backend_cache",
    "skip_file_discovery",
    "instance_prompt",
    "only_instance_prompt",
    "prepend_instance_prompt",
    "maximum_image_size",
    "target_downsample_size",
    "cache_dir_vae",
)
