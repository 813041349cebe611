"""The engine: one thread owns the model; every caller submits a job and follows its `Handle`."""

from .core import Engine
from .handle import Cancelled, Handle
from .jobs import EngineBusy, Finished, GenerationJob, Job, ScoreJob, StepRecord

__all__ = ["Cancelled", "Engine", "EngineBusy", "Finished", "GenerationJob", "Handle", "Job", "ScoreJob",
           "StepRecord"]
