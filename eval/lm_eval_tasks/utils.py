"""Helpers of the local lm-eval task files: data next to this file, TruthfulQA MC2, MATH answers, HumanEval pass@1."""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
HUMANEVAL_TIMEOUT_S = 10.0  # per program; the reference solutions run in well under a second


def local_dataset(data_files=None, **_metadata):
    """The task's data files, named relative to this folder, so a copied or moved task folder still runs."""
    # deferred: lm-eval imports this file for every task; datasets loads only when one runs
    import datasets

    if not data_files:
        raise ValueError(f"{HERE}: a local task needs dataset_kwargs.data_files")
    files = {split: str(HERE / name) for split, name in data_files.items()}
    missing = [f for f in files.values() if not os.path.isfile(f)]
    if missing:
        raise FileNotFoundError(f"local task data not found: {missing}")
    return datasets.load_dataset("json", data_files=files)


def process_results_mc2(doc, results):
    """TruthfulQA MC2: probability mass on the true answers, normalised over all answers."""
    log_likelihoods = np.array([ll for ll, _ in results])
    probs = np.exp(log_likelihoods - log_likelihoods.max())
    labels = np.array(doc["mc2_targets"]["labels"])
    return {"acc": float(probs[labels == 1].sum() / probs.sum())}


def math_docs(dataset):
    """MATH records keep problem and solution; the reference answer is the solution's last \\boxed{}."""
    # deferred: lm-eval's MATH helpers load only when a MATH task runs
    from lm_eval.tasks.hendrycks_math.utils import last_boxed_only_string, remove_boxed

    return dataset.map(lambda doc: {"problem": doc["problem"], "solution": doc["solution"],
                                    "answer": remove_boxed(last_boxed_only_string(doc["solution"]))})


def math_results(doc, results):
    """lm-eval's MATH scoring (hendrycks_math.process_results): string-normalised equality of final answers."""
    # deferred: lm-eval's MATH helpers load only when a MATH task runs
    from lm_eval.tasks.hendrycks_math.utils import process_results

    return process_results(doc, results)


def math_verify_results(doc, results):
    """math-verify's symbolic equivalence of the reply's final answer and the reference, plus lm-eval's string match."""
    # deferred: the optional math extra
    from math_verify import parse, verify

    gold = parse(f"${doc['answer']}$")
    return {"math_verify": float(bool(gold) and verify(gold, parse(results[0]))), **math_results(doc, results)}


def humaneval_results(doc, results):
    """pass@1 of a greedy completion: prompt + completion + the tests run in a fresh interpreter within a timeout."""
    program = f"{doc['prompt']}{results[0]}\n\n{doc['test']}\ncheck({doc['entry_point']})\n"
    with tempfile.TemporaryDirectory() as scratch:
        try:
            done = subprocess.run([sys.executable, "-c", program], cwd=scratch, capture_output=True,
                                  timeout=HUMANEVAL_TIMEOUT_S, env={"PATH": os.environ.get("PATH", "")})
            passed = done.returncode == 0
        except subprocess.TimeoutExpired:
            passed = False
    return {"pass@1": float(passed)}


def fiqa_label(doc):
    """FinGPT's FiQA-SA labels from the sentiment score: negative (< -0.1), neutral (< 0.1), positive."""
    score = float(doc["score"])
    return 0 if score < -0.1 else 1 if score < 0.1 else 2
