"""Planning the fine-tune stages: which fine-tunes a plan still needs, the cross-fitted sets' keys and
completeness, and the plan shown as a DAG (`features` prints it before running)."""
from __future__ import annotations

from pathlib import Path

from .stages import CrossfitBinding, FinetuneStage, Plan


def needed_stages(plan: Plan) -> list[FinetuneStage]:
    """Fine-tunes whose checkpoint is missing, or fails its checksums, while a feature set built on it is
    still incomplete (that is when the checkpoint would be read again)."""
    incomplete: set[str] = set()
    for s in plan.stages:
        if not s.complete and s.spec.get("upstream"):
            incomplete.add(s.spec["upstream"])
    for b in plan.crossfit:
        if not crossfit_complete(plan, b):
            incomplete |= {b.all_key, *b.fold_keys}
    return [st for st in plan.finetunes if st.key in incomplete and not (st.complete and _sound(st.path))]


def _sound(path: str) -> bool:
    """The checkpoint's files match the checksums recorded when it appeared."""
    from mer_pipe.cache.checkpoints import problem

    return problem(Path(path)) is None


def crossfit_complete(plan: Plan, b: CrossfitBinding) -> bool:
    """The cross-fitted set of `b` is assembled (its spec says complete)."""
    from mer_pipe.cache.featureset import is_complete
    from mer_pipe.cache.store import FeatureStore

    return is_complete(FeatureStore(plan.root), plan.dataset, plan.stage_of(b.slot).extractor, crossfit_key(plan, b))


def crossfit_key(plan: Plan, b: CrossfitBinding) -> str:
    """The key of a cross-fitted set: the all-train set's key and every fold's fine-tune key."""
    from mer_pipe.cache.keys import feature_key

    base = plan.stage_of(b.slot)
    return feature_key(base.extractor, base.version, {"crossfit": {"all": base.key, "folds": list(b.fold_keys)}},
                       plan.manifest_digest, upstream=base.spec.get("upstream"))


def format_plan(plan: Plan) -> str:
    """The plan as stages with their dependencies, e.g.
    `finetune t (MiniLM (packaged), 3 ep) [train] 1a2b3c4d -> extract t (text-hf) 5e6f7a8b [4/4 shards to compute]`."""
    needed = {s.key for s in needed_stages(plan)}
    lines = [f"plan for {plan.dataset} ({plan.n_utterances} utterances):"]
    by_key = {st.key: st for st in plan.finetunes}
    cf = {b.slot: b for b in plan.crossfit}
    for s in plan.stages:
        ext = f"extract {','.join(s.slots)} ({s.extractor}) {s.key[:8]} " + (
            "[cached]" if s.complete else f"[{len(s.missing)}/{s.n_shards} shards to compute]")
        up = s.spec.get("upstream")
        if up is None:
            lines.append(f"  {ext}")
            continue
        b = next((cf[sl] for sl in s.slots if sl in cf), None)
        keys = [b.all_key, *b.fold_keys] if b else [up]
        for k in keys:
            st = by_key[k]
            bad = st.complete or Path(st.path).is_dir()  # present but not sound (complete only when checked)
            state = ("retrain: fails its checksums" if bad else "train") if k in needed else \
                ("cached" if st.complete else "not needed" + (": fails its checksums" if bad else ""))
            lines.append(f"  {st.describe()} [{state}] {k[:8]} ->")
        lines.append(f"    {ext}" + (f" -> cross-fit assembly {','.join(s.slots)}" if b else ""))
    return "\n".join(lines)
