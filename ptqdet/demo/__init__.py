"""The embedded demo world: a generated shapes dataset in COCO format."""
