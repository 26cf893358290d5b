"""``shufflenet.engine`` keeps the names older code imports from it (the code lives in training/ and evaluation)."""

from __future__ import annotations

import shufflenet
from shufflenet import devices, engine, evaluation, training, transforms
from shufflenet.training import loaders, optim


def test_old_engine_names_are_the_new_objects() -> None:
    assert engine.train is training.train is shufflenet.train
    assert engine.TrainConfig is training.TrainConfig and engine.TrainResult is training.TrainResult
    assert engine.evaluate is evaluation.evaluate and engine.predict is evaluation.predict
    assert engine.EvalResult is evaluation.EvalResult and engine.load_eval_dataset is evaluation.load_eval_dataset
    assert engine.write_confusion is evaluation.write_confusion and engine.Prediction is evaluation.Prediction
    assert engine.resolve_device is devices.resolve_device and engine.resolve_amp is devices.resolve_amp
    assert engine.train_transform is transforms.train_transform
    assert engine.batch_normalizer is transforms.batch_normalizer
    assert engine.build_optimizer is optim.build_optimizer
    assert engine.CachedImages is loaders.CachedImages and engine.resolve_workers is loaders.resolve_workers
    assert engine.METRIC_COLUMNS[0] == "epoch" and engine.OPTIMIZERS == ("adam", "adamw", "sgd")
    assert set(engine.__all__) <= set(dir(engine))
