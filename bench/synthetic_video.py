"""Cheap synthetic videos of pooled frame features for the long-video benchmarks.

Background: a slowly drifting signal. Anchor vectors a_k ~ N(0, I) sit every ``drift_period``
frames and frame t interpolates the two anchors around it, renormalised to unit variance per
channel, plus a little per-frame noise; so neighbouring frames look alike and frames far apart
are unrelated. Events: a few short runs of frames (``event_frames`` long) replaced by a distinct
feature vector (N(0, I) × ``salience``), at known times. Every stream is a different video.
Chunks are generated on the fly on the target device (nothing of the whole video is stored).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Events:
    """Known events of S videos: start frame [S, K] (int64), length in frames, features [S, K, e]."""

    start: torch.Tensor
    frames: int
    features: torch.Tensor

    def centre(self) -> torch.Tensor:
        """Frame index of each event's middle, [S, K] float64."""
        return self.start.to(torch.float64) + (self.frames - 1) / 2


class DriftingVideo:
    """S synthetic videos of ``length`` frames of width ``width``; :meth:`chunks` yields [S, L, e] float32."""

    def __init__(self, length: int, width: int, streams: int = 1, seed: int = 0, device="cpu",
                 drift_period: int = 500, noise: float = 0.1, events: int = 0, event_frames: int = 8,
                 salience: float = 3.0):
        self.length, self.width, self.streams = length, width, streams
        self.seed, self.device = seed, torch.device(device)
        self.drift_period, self.noise = drift_period, noise
        self._anchors: dict[int, torch.Tensor] = {}
        self._noise_gen = torch.Generator(device=self.device).manual_seed(seed * 7919 + 1)
        self.events = self._place_events(events, event_frames, salience) if events else None
        self._event_starts = self.events.start.tolist() if events else []

    def _place_events(self, count: int, frames: int, salience: float) -> Events:
        """K events per video at random times in the middle 90 % of the video, none overlapping."""
        gen = torch.Generator().manual_seed(self.seed * 7919 + 2)
        usable = max(1, int(0.9 * self.length) - count * frames)
        offsets = torch.sort(torch.randint(0, usable, (self.streams, count), generator=gen), dim=1).values
        start = int(0.05 * self.length) + offsets + torch.arange(count) * frames
        features = torch.randn(self.streams, count, self.width, generator=gen) * salience
        return Events(start.clamp(max=self.length - frames), frames, features.to(self.device))

    def _anchor(self, index: int) -> torch.Tensor:
        if index not in self._anchors:
            gen = torch.Generator(device=self.device).manual_seed(self.seed * 1_000_003 + index)
            self._anchors = {k: v for k, v in self._anchors.items() if k >= index - 2}
            self._anchors[index] = torch.randn(self.streams, self.width, generator=gen, device=self.device)
        return self._anchors[index]

    def frames(self, start: int, count: int) -> torch.Tensor:
        """Frames start … start+count-1 of every video, [S, count, e] float32."""
        t = torch.arange(start, start + count, device=self.device)
        k, w = t // self.drift_period, (t % self.drift_period).to(torch.float32) / self.drift_period
        first = int(k[0])
        anchors = torch.stack([self._anchor(i) for i in range(first, int(k[-1]) + 2)], dim=1)  # [S, A, e]
        lo, hi = anchors[:, k - first], anchors[:, k - first + 1]
        w = w[None, :, None]
        video = ((1 - w) * lo + w * hi) / torch.sqrt((1 - w) ** 2 + w ** 2)
        video += self.noise * torch.randn(video.shape, generator=self._noise_gen, device=self.device)
        if self.events is not None:
            self._insert_events(video, start, count)
        return video

    def _insert_events(self, video: torch.Tensor, start: int, count: int) -> None:
        ev = self.events
        for s, starts in enumerate(self._event_starts):
            for k, first in enumerate(starts):
                lo = first - start
                a, b = max(lo, 0), min(lo + ev.frames, count)
                if a < b:
                    video[s, a:b] = ev.features[s, k] + self.noise * torch.randn(
                        b - a, self.width, generator=self._noise_gen, device=self.device)

    def chunks(self, chunk: int):
        """Yield (first frame index, frames [S, L, e]) chunk after chunk (the last may be shorter)."""
        for start in range(0, self.length, chunk):
            yield start, self.frames(start, min(chunk, self.length - start))
