"""The parquet report's schema: one constant that the writer, the readers and the tests import.

Bump SCHEMA_VERSION on any change and document it in the README's column table (a test checks that
every column here is documented). Columns are only ever added, never retyped.
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 4  # 2: unit_price_usd, price_source; 3: run_name, manifest_path, manifest_sha256;
# 4: source_color_primaries, source_color_transfer, source_color_matrix, source_color_range

_TS = pa.timestamp("us", tz="UTC")

REPORT_SCHEMA = pa.schema(
    [
        pa.field("schema_version", pa.int16(), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("run_started_at", _TS, nullable=False),
        pa.field("run_name", pa.string()),
        pa.field("manifest_path", pa.string()),
        pa.field("manifest_sha256", pa.string()),
        pa.field("job_id", pa.string(), nullable=False),
        pa.field("row", pa.int32(), nullable=False),
        pa.field("job_key", pa.string()),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error", pa.string()),
        pa.field("error_stage", pa.string()),
        pa.field("backend", pa.string(), nullable=False),
        pa.field("endpoint", pa.string(), nullable=False),
        # the input as the user gave it
        pa.field("source_path", pa.string(), nullable=False),
        pa.field("source_sha256", pa.string()),
        pa.field("source_bytes", pa.int64()),
        pa.field("source_container", pa.string()),
        pa.field("source_video_codec", pa.string()),
        pa.field("source_pix_fmt", pa.string()),
        pa.field("source_width", pa.int32()),
        pa.field("source_height", pa.int32()),
        pa.field("source_rotation", pa.int32()),
        pa.field("source_fps", pa.float64()),
        pa.field("source_is_vfr", pa.bool_()),
        pa.field("source_is_hdr", pa.bool_()),
        pa.field("source_has_audio", pa.bool_()),
        pa.field("source_duration_s", pa.float64()),
        pa.field("source_color_primaries", pa.string()),
        pa.field("source_color_transfer", pa.string()),
        pa.field("source_color_matrix", pa.string()),
        pa.field("source_color_range", pa.string()),
        pa.field("preprocess_actions", pa.list_(pa.string())),
        # the input as uploaded (after preprocessing)
        pa.field("input_path", pa.string()),
        pa.field("input_sha256", pa.string()),
        pa.field("input_bytes", pa.int64()),
        pa.field("input_duration_s", pa.float64()),
        pa.field("input_width", pa.int32()),
        pa.field("input_height", pa.int32()),
        pa.field("input_url", pa.string()),
        pa.field("upload_cache_hits", pa.int32()),
        pa.field("uploaded_bytes", pa.int64()),
        # the request
        pa.field("keep_audio", pa.bool_()),
        pa.field("shot_type", pa.string()),
        pa.field("n_images", pa.int32()),
        pa.field("n_elements", pa.int32()),
        pa.field("request_id", pa.string()),
        pa.field("status_polls", pa.int32()),
        # the output
        pa.field("output_url", pa.string()),
        pa.field("output_path", pa.string()),
        pa.field("output_sha256", pa.string()),
        pa.field("output_bytes", pa.int64()),
        pa.field("output_duration_s", pa.float64()),
        # cost
        pa.field("estimated_seconds", pa.float64()),
        pa.field("estimated_cost_usd", pa.float64()),
        pa.field("billed_seconds", pa.float64()),
        pa.field("cost_usd", pa.float64()),
        pa.field("cost_source", pa.string()),
        pa.field("unit_price_usd", pa.float64()),
        pa.field("price_source", pa.string()),
        pa.field("reused", pa.bool_()),
        # timing
        pa.field("submitted_at", _TS),
        pa.field("started_at", _TS),
        pa.field("completed_at", _TS),
        pa.field("queued_s", pa.float64()),
        pa.field("processing_s", pa.float64()),
        pa.field("total_s", pa.float64()),
    ],
    metadata={"klingflow.schema_version": str(SCHEMA_VERSION)},
)
