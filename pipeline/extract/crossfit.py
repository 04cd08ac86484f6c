"""Cross-fit assembly: the feature set of a cross-fitted slot (`crossfit = N`).

Fold k's training utterances are extracted by fold k's encoder (the one that never saw them); every other row
(dev, test, training utterances in no fold) is kept from the all-train feature set the plan extracted. This runs
through the extraction's own shard runner (shardrun.py: the same batches, batch size, decoding and failure
records), as retry tasks: a task of fold k extracts fold k's utterances of one shard and keeps the shard's other
rows, from the all-train shard for the first fold that touches it, from the set being assembled after that.
The set has the all-train set's sharding; its spec names every fine-tune key (`finetune_keys`) and the slot is
locked to it. It runs in this process, one fold encoder at a time, after the plan's shards are done.
"""
from __future__ import annotations

from typing import Callable

from .finetune_plan import crossfit_complete, crossfit_key
from .overlap import OverlapConfig, for_workers
from .plan import set_items, with_run_settings
from .progress import reason_category, stderr
from .shardrun import forget_extractor, run_shard
from .stages import CrossfitBinding, Plan, ShardTask

Log = Callable[[str], None]


def _fold_tasks(plan: Plan, b: CrossfitBinding, key: str, spec: dict) -> list[list[ShardTask]]:
    """Per fold, the retry tasks of the shards holding its training utterances (fold 0 also copies the shards
    holding none, so every shard of the set is written)."""
    from mer_pipe.cache.checkpoints import checkpoint_dir
    from mer_pipe.cache.featureset import shard_attrs, shard_bounds
    from mer_pipe.cache.store import FeatureStore

    store = FeatureStore(plan.root)
    base = plan.stage_of(b.slot)
    items = set_items(base.modality, plan.prepared, base.spec.get("inputs") or {})
    touched: set[int] = set()
    folds = []
    for k, fold_key in enumerate(b.fold_keys):
        config = {**base.config, "model": str(checkpoint_dir(store, plan.dataset, fold_key))}
        tasks = []
        for i, (lo, hi) in enumerate(shard_bounds(base.n_items, base.shard_size)):
            part = tuple(items[lo:hi])
            ids = tuple(it["id"] for it in part if b.fold_of.get(it["id"]) == k)
            if not ids and k > 0:
                continue
            first = i not in touched
            touched.add(i)
            tasks.append(ShardTask(
                dataset=plan.dataset, extractor=base.extractor, modality=base.modality, config=config, key=key,
                index=i, n_shards=base.n_shards, path=str(store.shard_path(plan.dataset, base.extractor, key, i,
                                                                           base.n_shards)),
                items=part, slots=(b.slot,), batch_size=base.batch_size,
                attrs=shard_attrs(spec, i, {"crossfit_of": base.key}), retry_ids=ids,
                keep_from=str(store.shard_path(plan.dataset, base.extractor, base.key, i, base.n_shards)) if first
                else None))
        folds.append(tasks)
    return folds


def assemble_crossfit(plan: Plan, *, device: str = "auto", batch_size: int | None = None, strict: bool = False,
                      hash_media: bool = False, overlap: OverlapConfig | None = None, log: Log = stderr) -> list[str]:
    """Build each cross-fitted slot's feature set (once) and lock the slot to it; returns the set keys."""
    from mer_pipe.cache.featureset import begin_set, complete_spec, derive_spec, lock_slots
    from mer_pipe.cache.store import FeatureStore

    store = FeatureStore(plan.root)
    feed = for_workers(overlap or OverlapConfig(), device, 1)  # this process is the one worker
    done = []
    for b in plan.crossfit:
        base = plan.stage_of(b.slot)
        key = crossfit_key(plan, b)
        if not crossfit_complete(plan, b):
            spec = derive_spec(store.read_spec(plan.dataset, base.extractor, base.key), key,
                               upstream=base.spec.get("upstream"), finetune_keys=[b.all_key, *b.fold_keys],
                               crossfit={"folds": len(b.fold_keys), "all_train_features": base.key})
            begin_set(store, spec)
            for k, tasks in enumerate(_fold_tasks(plan, b, key, spec)):
                n = sum(len(t.retry_ids or ()) for t in tasks)
                log(f"extract {b.slot} fold {k + 1}/{len(b.fold_keys)}: {n} training utterances with the "
                    f"encoder that did not see them")
                for task in tasks:
                    run_shard(with_run_settings(task, device=device, strict=strict, batch_size=batch_size,
                                                hash_media=hash_media or None), overlap=feed)
                if tasks:
                    forget_extractor(with_run_settings(tasks[0], device=device))  # one fold encoder at a time
            complete_spec(store, spec, categorize=reason_category)
        spec = store.read_spec(plan.dataset, base.extractor, key)
        lock_slots(store, spec, (b.slot,))
        done.append(key)
    return done


__all__ = ["assemble_crossfit"]
