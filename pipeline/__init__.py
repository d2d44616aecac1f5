"""segfuse streaming runtime: sources, sync, pre/postprocess, fusion, sinks.

Nothing is imported here on purpose: `segfuse --help` must stay instant and
`calibration`/`engines` import the leaf modules (`pipeline.errors`,
`pipeline.config`, `pipeline.types`) without pulling in the runtime.
"""
