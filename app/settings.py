"""Server settings, from HALLUWATCH_* environment variables or the CLI.

Every folder the service writes lies under `home` (HALLUWATCH_HOME); the shipped params are
package data and only read.
"""

from pathlib import Path

import platformdirs
from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

import calibrated_params


def default_home() -> Path:
    """The per-user data folder: ~/.local/share/halluwatch on Linux (XDG_DATA_HOME respected),
    ~/Library/Application Support/halluwatch on macOS."""
    return Path(platformdirs.user_data_dir("halluwatch", appauthor=False))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HALLUWATCH_", extra="ignore")

    model: str = Field("default",
                       description="model reference: default, a .gguf file, an mlx-lm folder or a cached repo id")
    params: Path | None = Field(None, description="calibrated params file to serve (else the model's active "
                                                  "calibration, else the newest shipped params that match)")
    home: Path = Field(default_factory=default_home, description="folder for everything the service writes")
    params_dir: Path = Field(calibrated_params.DIR,
                             description="shipped params, searched when no calibration is active")
    # Below `home` unless set: the job database and active-calibration pointers; params written by
    # calibration runs; score checkpoints, splits and reports; the only folder /calibrate reads data from.
    state_dir: Path | None = Field(None, description="default: HOME/state")
    calibrations_dir: Path | None = Field(None, description="default: HOME/calibrations")
    reports_dir: Path | None = Field(None, description="default: HOME/reports")
    data_dir: Path | None = Field(None, description="default: HOME/data")
    precision: str = Field("auto",
                           description="auto (float32 on Linux with OpenBLAS, else as stored), float32 or native")
    host: str = "127.0.0.1"
    port: int = 8000
    max_tokens_limit: int = Field(2048, ge=1, description="largest max_tokens a request may ask for")
    default_max_tokens: int = Field(256, ge=1)
    queue_depth: int = Field(16, ge=1, description="requests waiting for the engine before 503")
    max_batch_size: int = Field(32, ge=1, description="generation requests decoded together in one batch; "
                                                      "more wait in the queue")
    max_body_bytes: int = Field(1_000_000, ge=1024, description="largest request body (413 beyond)")
    prefill_step_size: int = Field(2048, ge=1)
    prompt_cache_mb: float = Field(512, ge=0, description="KV caches of recent prompts kept in memory, so a new "
                                   "prompt sharing a prefix with one (a system prompt, an earlier turn) skips "
                                   "prefilling it; 0: off")
    api_key: str | None = Field(None, description="require 'Authorization: Bearer <key>' on every route but /health")
    metrics_public: bool = Field(False, description="serve /metrics without the API key")
    request_timeout_s: float = Field(300.0, gt=0,
                                     description="a generation running longer gets 504 (or an error event)")
    shutdown_grace_s: float = Field(10.0, ge=0, description="on SIGTERM, time in-flight requests get to finish")
    max_streams: int = Field(32, ge=1, description="concurrent streaming responses before 429")
    pfail_tau: float = Field(2.0, description="τ of P_fail (prototype default)")
    pfail_lambda: float = Field(5.0, description="λ of P_fail (prototype default)")
    pfail_cutoff: float = Field(0.85, gt=0, lt=1, description="default cutoff for halt_on_pfail")
    flag_risk: float = Field(0.5, gt=0, lt=1,
                             description="a response whose risk probability is at least this is flagged")
    # The response log (app/monitor/): every scored response, in SQLite under state_dir or in PostgreSQL.
    log: bool = Field(True, description="keep the response log (HALLUWATCH_LOG=off disables it)")
    log_url: str | None = Field(None, description="postgresql://… to share one log between replicas "
                                                  "(default: SQLite STATE_DIR/responses.sqlite3)")
    log_text: bool = Field(False, description="store prompt and response text in the log (else a salted hash)")
    log_queue: int = Field(1000, ge=1, description="log entries waiting to be written before new ones are dropped")
    log_max_age_days: float = Field(30.0, gt=0, description="log entries older than this are pruned")
    log_max_rows: int = Field(1_000_000, ge=1, description="beyond this many log entries the oldest are pruned")
    log_max_mb: float = Field(1024.0, gt=0, description="beyond this many MB (2**20 bytes) the oldest log entries are "
                                                      "pruned, to 90 % of it")
    drift_window: int = Field(500, ge=10, description="responses per calibration in the rolling window drift is "
                                                      "measured on")
    drift_min_live: int = Field(200, ge=2, description="responses in the window before drift is measured")

    @model_validator(mode="after")
    def _default_within_limit(self):
        # a smaller limit lowers the default too, so a request without max_tokens is never refused
        self.default_max_tokens = min(self.default_max_tokens, self.max_tokens_limit)
        for name in ("state", "calibrations", "reports", "data"):
            if getattr(self, f"{name}_dir") is None:
                setattr(self, f"{name}_dir", self.home / name)
        return self
