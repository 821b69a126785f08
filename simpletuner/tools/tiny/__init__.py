"""One module per model family, each with build(output_dir, seed) -> output_dir."""
