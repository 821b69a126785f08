"""Options: datasets, image and text processing, caching."""

from __future__ import annotations

from simpletuner.config.option import Option
from simpletuner.config.options.common import (
    CACHING,
    DATA,
    IMAGES,
    PREFETCHING,
)

OPTIONS: tuple[Option, ...] = (
    # ------------------------------------------------------------------ Data
    Option(
        "data_backend_config", "path", None,
        "The multidatabackend.json file that lists the datasets to train on and "
        "their caches.",
        DATA,
    ),
    Option(
        "data_backend_sampling", "str", "auto-weighting",
        "How batches are shared between datasets: auto-weighting by each "
        "dataset's size and repeats, or uniform by their probabilities alone.",
        DATA, choices=("uniform", "auto-weighting"),
    ),
    Option(
        "override_dataset_config", "bool", False,
        "Accept a change to a dataset's size or crop settings after its latents "
        "were cached: rebuild its buckets and encode again, instead of stopping.",
        DATA,
    ),
    Option(
        "preserve_data_backend_cache", "bool", False,
        "Keep each dataset's saved file list and bucket metadata as they are "
        "instead of refreshing them at start-up.",
        DATA,
    ),
    Option(
        "skip_file_discovery", "list", None,
        "Start-up checks every dataset skips unless it sets its own: aspect and "
        "metadata trust the saved file list, vae and text assume the latent and "
        "text-embed caches are complete.",
        DATA, choices=("vae", "aspect", "text", "metadata"),
    ),
    Option(
        "disable_bucket_pruning", "bool", False,
        "Train on every image of every bucket each epoch: a bucket's last, "
        "incomplete batch (or a bucket smaller than a batch) is filled with "
        "repeats of its own images instead of being left out.",
        DATA,
    ),
    Option(
        "caption_dropout_probability", "float", 0.0,
        "Chance of training a sample with the empty prompt's embeddings instead "
        "of its caption's, which teaches unconditional generation (for CFG).",
        DATA, minimum=0, maximum=1,
    ),
    Option(
        "dataloader_prefetch", "bool", False,
        "Read the next batches' cached latents and text embeds in a background "
        "thread while the current step computes, for runs where reading the caches "
        "(slow disks, S3) holds the step up. What trains is unchanged (bitwise on "
        "CPU), and a resumed run continues at the same sample. Not with datasets "
        "that set vae_cache_clear_each_epoch. See documentation/TRAINING_SPEED.md.",
        DATA,
    ),
    Option(
        "dataloader_prefetch_qlen", "int", 10,
        "How many prepared batches each process keeps ready when prefetching "
        "(their tensors stay in memory).",
        DATA, minimum=1, applies_when=(PREFETCHING,),
    ),
    Option(
        "aspect_bucket_worker_count", "int", None,
        "Threads that read image headers while a dataset is scanned. Unset picks up to 4 "
        "for local folders and 16 for S3 buckets.",
        DATA, minimum=1,
    ),
    Option(
        "print_filenames", "bool", False,
        "List every skipped image by name in the start-up summary, not only the first "
        "few of each reason.",
        DATA,
    ),
    Option(
        "print_sampler_statistics", "bool", False,
        "List every bucket of every dataset in the start-up summary. Without it a dataset "
        "with many buckets shows its 12 largest and one row adding up the rest.",
        DATA,
    ),
    Option(
        "ignore_missing_files", "bool", False,
        "Carry on when an image listed by a saved file list is gone. Always the case here: "
        "a missing image is left out with a reason in the summary, so this changes nothing.",
        DATA,
    ),
    Option(
        "delete_problematic_images", "bool", False,
        "Move images that cannot be read or decoded out of the dataset, into a folder "
        "named after it with .rejected beside it (a rejected/ prefix in an S3 bucket); "
        "nothing is deleted, and the summary says how to put them back.",
        DATA,
    ),
    Option(
        "delete_unwanted_images", "bool", False,
        "Move images left out for their size or aspect ratio (minimum_image_size, "
        "minimum/maximum_aspect_ratio) into the same quarantine folder as "
        "--delete_problematic_images; nothing is deleted.",
        DATA,
    ),
    Option(
        "metadata_update_interval", "int", 3600,
        "Seconds between saves of a dataset's metadata while it is scanned.",
        DATA, minimum=1,
        no_effect="a dataset's metadata is saved once its scan ends, atomically",
    ),
    Option(
        "parquet_caption_column", "str", None,
        "Caption column of every dataset's parquet table that does not name its own "
        "caption_column.",
        DATA,
    ),
    Option(
        "parquet_filename_column", "str", None,
        "File name column of every dataset's parquet table that does not name its own "
        "filename_column.",
        DATA,
    ),
    # --------------------------------------------- Image and text processing
    Option(
        "resolution", "float", 1024,
        "Training size used by datasets that set none: pixels for pixel and "
        "pixel_area, megapixels for area.",
        IMAGES, minimum=0,
    ),
    Option(
        "resolution_type", "str", "pixel_area",
        "How --resolution is read: pixel sets the shorter edge, pixel_area sets "
        "an area of resolution squared split into aspect buckets, area "
        "(deprecated) is pixel_area given in megapixels (1.0 = 1000x1000).",
        IMAGES, choices=("pixel", "area", "pixel_area"),
    ),
    Option(
        "aspect_bucket_alignment", "int", 64,
        "Bucket widths and heights are rounded to a multiple of this many pixels.",
        IMAGES, minimum=8,
    ),
    Option(
        "aspect_bucket_rounding", "int", None,
        "Round each image's aspect ratio to this many decimal places before "
        "bucketing, merging near-identical aspects. Unset keeps buckets exact.",
        IMAGES, minimum=1, maximum=9,
    ),
    Option(
        "minimum_image_size", "float", None,
        "Leave out images smaller than this (same unit as --resolution). Unset "
        "keeps them all.",
        IMAGES, minimum=0,
    ),
    Option(
        "crop", "bool", False,
        "Crop newly discovered images to their bucket's shape instead of only "
        "resizing them.",
        IMAGES,
    ),
    Option(
        "crop_style", "str", "random",
        "Which part is kept when cropping: the center, the bottom-right corner, a "
        "random window, or the largest face.",
        IMAGES, choices=("center", "corner", "random", "face"), aliases={"centre": "center"},
    ),
    Option(
        "crop_aspect", "str", "square",
        "Shape of crops: square, preserve (the image's own aspect), or closest or "
        "random from --crop_aspect_buckets.",
        IMAGES, choices=("square", "preserve", "closest", "random"),
    ),
    Option(
        "crop_aspect_buckets", "list", None,
        "Aspect ratios (width / height) that the closest and random crop aspects "
        "choose from.",
        IMAGES,
    ),
    Option(
        "caption_strategy", "str", "filename",
        "Where captions come from: a .txt file beside each image, the cleaned-up "
        "file name, a parquet table, or the dataset's instance_prompt.",
        IMAGES, choices=("textfile", "filename", "parquet", "instanceprompt"),
    ),
    Option(
        "instance_prompt", "str", None,
        "Caption of datasets that set no instance_prompt of their own (used by "
        "caption_strategy instanceprompt, --only_instance_prompt and "
        "--prepend_instance_prompt).",
        IMAGES,
    ),
    Option(
        "only_instance_prompt", "bool", False,
        "Train every dataset that does not say otherwise on its instance_prompt instead "
        "of its captions.",
        IMAGES,
    ),
    Option(
        "prepend_instance_prompt", "bool", False,
        "Put the instance_prompt before the captions of every dataset that does not say "
        "otherwise.",
        IMAGES,
    ),
    Option(
        "maximum_image_size", "float", None,
        "With crop, images larger than this (same unit as --resolution) are first "
        "downsampled to --target_downsample_size, for datasets that set neither.",
        IMAGES, minimum=0,
    ),
    Option(
        "target_downsample_size", "float", None,
        "Size that images above --maximum_image_size are downsampled to before cropping, "
        "for datasets that set neither.",
        IMAGES, minimum=0,
    ),
    # --------------------------------------------------------------- Caching
    Option(
        "vae_batch_size", "int", 4,
        "Images encoded together when filling the latent cache.",
        CACHING, minimum=1,
    ),
    Option(
        "text_encoder_batch_size", "int", 8,
        "Captions encoded together when filling the text-embed cache.",
        CACHING, minimum=1,
    ),
    Option(
        "cache_dir_vae", "path", None,
        "Latent cache folder of image datasets that set no cache_dir_vae; write {id} in "
        "it (cache/vae/{id}) so each dataset gets its own.",
        CACHING,
    ),
    Option(
        "cache_dir_text", "path", None,
        "Cache folder of text_embeds datasets that set no cache_dir.",
        CACHING,
    ),
    Option(
        "cache_dir", "path", None,
        "Folder SimpleTuner downloads models into.",
        CACHING, implemented=False,
        refusal="set HF_HOME in config/config.env to choose where downloaded models go; dataset caches "
                "are set by cache_dir_vae and cache_dir in multidatabackend.json or --cache_dir_vae and "
                "--cache_dir_text",
    ),
    Option(
        "vae_dtype", "str", "default",
        "Dtype the VAE runs in while encoding the latent cache: default keeps the "
        "family's choice (fp32); fp16 or bf16 encode faster in less memory but give "
        "slightly different latents (a different cache key, so they are encoded "
        "again). The stock SDXL VAE overflows in fp16: use an fp16-safe VAE "
        "(--pretrained_vae_model_name_or_path) with fp16.",
        CACHING, choices=("default", "fp16", "bf16", "fp32"),
    ),
    Option(
        "vae_cache_scan_behaviour", "str", "recreate",
        "What a dataset's scan_for_errors check does with a bad latent: recreate "
        "deletes it to be encoded again; sync keeps a sound latent of another size "
        "and moves its image to the bucket that latent fits.",
        CACHING, choices=("recreate", "sync"),
    ),
    Option(
        "compress_disk_cache", "bool", False,
        "Compress cached latents and text embeds on disk; saves much space on "
        "padded T5 embeds. Entries of either form are read whatever this is set to.",
        CACHING,
    ),
    Option(
        "vae_cache_ondemand", "bool", False,
        "Start training before every latent is cached: each batch's missing latents are "
        "encoded when it is first needed and written to the same cache, so a later run "
        "reuses them. The VAE stays loaded while training. With --cache_only, everything "
        "is cached first as usual.",
        CACHING,
    ),
    Option(
        "offload_during_startup", "bool", False,
        "Keep the text encoders off the accelerator while the latent cache is "
        "built. Always the case here: text encoders load only after the VAE is "
        "freed, so this setting changes nothing.",
        CACHING,
    ),
)
