"""A custom distributed training loop for ``MultiWorkerMirroredStrategy``.

Keras 3's ``fit`` fails under that strategy on TF 2.21 / Keras 3.15 ("unsupported type PerReplica to a
Tensor", keras-team/keras#20585); :func:`fit_distributed` drives the same compiled model with a custom
train step (``strategy.run``, ``tf.nn.compute_average_loss``, ``optimizer.apply_gradients``).
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import tensorflow as tf

__all__ = ["fit_distributed"]


def fit_distributed(model: keras.Model, train_ds: tf.data.Dataset, *, strategy, epochs: int,
                    steps_per_epoch: int, global_batch_size: int,
                    validation_data: tf.data.Dataset | None = None, initial_epoch: int = 0,
                    callbacks: Sequence[keras.callbacks.Callback] = (), verbose: int = 0) -> dict:
    """Train a compiled model with a custom step (for ``MultiWorkerMirroredStrategy``).

    Each replica computes the compiled loss on its share of the global batch;
    the loss is scaled by ``local batch / global batch``
    (``tf.nn.compute_average_loss``) so that the gradients, summed over all
    replicas by ``optimizer.apply_gradients``, are those of the global batch.
    Validation runs on every worker on the whole (non-distributed)
    ``validation_data`` with fresh copies of the compiled metrics (e.g. the
    :class:`~medseg_tf.losses.DiceScore` ones), so all workers log the same
    numbers. Non-trainable variables (BatchNorm moving statistics), which each
    replica updates from its own share of the batch, are averaged over the
    replicas at the end of every epoch.
    Callbacks get the usual ``on_train_begin``, ``on_epoch_begin/end``,
    ``on_train_batch_end``, ``on_test_begin/end`` and ``on_train_end`` calls.

    Parameters
    ----------
    model : keras.Model
        Built and compiled inside ``strategy.scope()``.
    train_ds : tf.data.Dataset
        Endless, batched by ``global_batch_size``.
    strategy : tf.distribute.Strategy
    epochs, steps_per_epoch, global_batch_size, initial_epoch : int
    validation_data : tf.data.Dataset, optional
    callbacks : sequence of keras.callbacks.Callback
    verbose : int
        Passed to the callback list (1 adds a Keras progress bar).

    Returns
    -------
    dict
        The logs of each epoch: ``{"loss": [...], "val_loss": [...], ...}``.
    """
    loss_fn = model.loss
    optimizer = model.optimizer
    callback_list = keras.callbacks.CallbackList(list(callbacks), add_history=True,
                                                 add_progbar=verbose == 1, model=model,
                                                 verbose=verbose, epochs=epochs, steps=steps_per_epoch)

    def replica_step(x, y):
        with tf.GradientTape() as tape:
            y_pred = model(x, training=True)
            loss = loss_fn(y, y_pred)
            if model.losses:
                loss = loss + tf.add_n(model.losses)
            # the losses are batch means; give each local sample that value, then average
            # over the *global* batch: the replicas' gradients sum to the global-batch gradient
            per_sample = loss * tf.ones([tf.shape(x)[0]], dtype=loss.dtype)
            scaled = tf.nn.compute_average_loss(per_sample, global_batch_size=global_batch_size)
            scaled_for_grad = optimizer.scale_loss(scaled)
        grads = tape.gradient(scaled_for_grad, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return scaled

    @tf.function
    def train_step(iterator):
        per_replica = strategy.run(replica_step, args=next(iterator))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    # Non-trainable state (BatchNorm moving statistics) is updated by each replica from its own
    # share of the batch, so the copies drift apart; average them at the end of each epoch.
    # Moving averages are linear, so this equals averaging after every step.
    synced = [v for v in model.non_trainable_variables if "float" in str(v.dtype)]

    @tf.function
    def sync_non_trainable():
        def replica_fn():
            context = tf.distribute.get_replica_context()
            means = context.all_reduce(tf.distribute.ReduceOp.MEAN, [tf.identity(v.value) for v in synced])
            for variable, mean in zip(synced, means):
                variable.assign(mean)

        strategy.run(replica_fn)

    # validation outside the strategy: plain variables, the same on every worker
    compiled = (model.get_compile_config() or {}).get("metrics") or []
    if not isinstance(compiled, list):
        raise ValueError("fit_distributed supports a flat list of compiled metrics only")
    val_metrics = [keras.metrics.deserialize(m) for m in compiled]

    @tf.function
    def val_step(x, y):
        y_pred = model(x, training=False)
        for metric in val_metrics:
            metric.update_state(y, y_pred)
        return loss_fn(y, y_pred), tf.shape(x)[0]

    iterator = iter(strategy.experimental_distribute_dataset(train_ds))
    model.stop_training = False
    with strategy.scope():  # BackupAndRestore may restore optimizer variables: create them in scope
        if not optimizer.built:
            optimizer.build(model.trainable_variables)
        callback_list.on_train_begin()
    epoch_logs: dict = {}
    for epoch in range(initial_epoch, epochs):
        callback_list.on_epoch_begin(epoch)
        total = 0.0
        for step in range(steps_per_epoch):
            callback_list.on_train_batch_begin(step)
            loss = float(train_step(iterator))
            total += loss
            callback_list.on_train_batch_end(step, {"loss": loss})
        if synced:
            sync_non_trainable()
        epoch_logs = {"loss": total / steps_per_epoch}
        if validation_data is not None:
            callback_list.on_test_begin()
            for metric in val_metrics:
                metric.reset_state()
            loss_sum, count = 0.0, 0
            for x, y in validation_data:
                loss, n = val_step(x, y)
                loss_sum += float(loss) * int(n)
                count += int(n)
            val_logs = {"loss": loss_sum / max(count, 1)}
            val_logs.update({m.name: float(m.result()) for m in val_metrics})
            callback_list.on_test_end(val_logs)
            epoch_logs.update({f"val_{k}": v for k, v in val_logs.items()})
        callback_list.on_epoch_end(epoch, epoch_logs)
        if model.stop_training:
            break
    callback_list.on_train_end(epoch_logs)
    return model.history.history if model.history is not None else {}
