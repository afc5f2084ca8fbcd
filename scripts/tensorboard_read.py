"""Reads a folder of TensorBoard event files with TensorBoard's own EventAccumulator and prints
its scalars ({tag: [[step, value], ...]}, null for NaN) and text summaries ({tag: [text, ...]}) as JSON."""

import json
import math
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.util import tensor_util

acc = EventAccumulator(sys.argv[1], size_guidance={"scalars": 0, "tensors": 0})
acc.Reload()
tags = acc.Tags()
finite = lambda v: v if math.isfinite(v) else None  # noqa: E731 (JSON has no NaN)
scalars = {tag: [[e.step, finite(e.value)] for e in acc.Scalars(tag)] for tag in tags["scalars"]}
texts = {
    tag: [tensor_util.make_ndarray(e.tensor_proto).item().decode() for e in acc.Tensors(tag)]
    for tag in tags["tensors"]
}
json.dump({"scalars": scalars, "texts": texts}, sys.stdout)
