"""Which trial errors ``study.run`` resumes by itself: a trial's actor lost with its worker or
node (Ray's own exception classes, as Tune raises them), never an error of the training code."""

from __future__ import annotations

from ray.exceptions import (
    ActorDiedError,
    ActorUnavailableError,
    NodeDiedError,
    RayActorError,
    RayTaskError,
    WorkerCrashedError,
)

from study.tune import lost_to_infrastructure


def test_actor_node_and_worker_losses_are_infrastructure():
    errors = [
        ActorUnavailableError("The actor is temporarily unavailable: Socket closed", None),
        ActorDiedError(),
        RayActorError(),
        NodeDiedError("node 1 died"),
        WorkerCrashedError(),
        RayTaskError("train", "traceback", ActorDiedError()),
    ]
    assert lost_to_infrastructure(errors) == errors


def test_training_code_errors_are_not():
    user = RayTaskError("train", "Traceback ... ValueError: bad lr", ValueError("bad lr"))
    oom = RayTaskError("train", "Traceback ... RuntimeError", RuntimeError("CUDA out of memory"))
    assert lost_to_infrastructure([user, oom, ValueError("plain")]) == []
    mixed = [user, ActorDiedError()]
    assert lost_to_infrastructure(mixed) == [mixed[1]]
