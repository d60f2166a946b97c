"""The HTTP API's response models (its OpenAPI schema)."""

from __future__ import annotations

from pydantic import BaseModel


class Box(BaseModel):
    x: float
    y: float
    w: float
    h: float


class FaceOut(BaseModel):
    box: Box
    track_id: int | None = None
    det_score: float
    label: str
    confidence: float
    probs: dict[str, float]


class PredictOut(BaseModel):
    width: int
    height: int
    faces: list[FaceOut]


class JobOut(BaseModel):
    id: str
    status: str
    progress: float
    frames_done: int
    frames_total: int | None = None
    error: str | None = None
    summary: dict | None = None
    created: float


class ModelInfo(BaseModel):
    version: str
    model: str
    checkpoint: str
    classes: list[str]
    preprocess: dict
    detector: str
    limits: dict
