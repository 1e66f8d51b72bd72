"""What pyproject.toml cannot say: the top-level conf/ ships inside the wheel as superfilter/conf (Hydra reads it)."""

from setuptools import find_namespace_packages, setup

# Folders of data files count as (namespace) packages, so that setuptools ships them without warnings.
CODE = find_namespace_packages(include=["superfilter*", "train*", "eval*"], exclude=["*.__pycache__"])
CONF = ["superfilter.conf", *(f"superfilter.conf.{p}" for p in find_namespace_packages(where="conf"))]

setup(
    packages=[*CODE, *CONF],
    package_dir={"superfilter.conf": "conf"},
    package_data={
        **{package: ["*.yaml"] for package in CONF},
        "eval.judge_prompts": ["*.txt"],
        "eval.lm_eval_tasks": ["*.yaml", "*_yaml"],
    },
)
