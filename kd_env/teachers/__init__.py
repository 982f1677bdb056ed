"""Teachers: the frozen networks a KD environment distils from, and the pools they form.

* :mod:`~kd_env.teachers.teacher_files`: where a teacher's checkpoint lives, how it is written
  (atomically, with a checksum of its weights) and loaded (verified);
* :mod:`~kd_env.teachers.recipes`: the training recipe and what data a teacher sees (all of it,
  a class subset, relabelled classes);
* :mod:`~kd_env.teachers.training`: :func:`train_teacher`, resumable;
* :mod:`~kd_env.teachers.evaluation`: accuracy and predictions, overall and per class group;
* :mod:`~kd_env.teachers.pools`: named pools (``capacity``, ``noisy``, ``specialists``, users'
  own via :func:`register_pool`), trained once and cached.
"""

from .evaluation import accuracy_by_class_group, evaluate_accuracy, predict_classes
from .pools import (
    POOLS,
    PoolSpec,
    ensure_pool,
    ensure_teacher_pool,
    get_pool,
    list_teachers,
    pool_members,
    pool_train_command,
    register_pool,
    specialist_groups,
    train_pool_member,
)
from .recipes import (
    LR_DECAY_AT,
    TEACHER_POOL_EPOCHS,
    TEACHER_POOLS,
    TeacherRecipe,
    default_recipe,
    derangement,
    lr_for_epoch,
    lr_milestones,
)
from .teacher_files import (
    TEACHER_FORMAT,
    TeacherCheckpointError,
    TeacherChecksumError,
    TeacherMismatchError,
    TeacherNotFoundError,
    TeacherPermissionError,
    load_teacher,
    read_teacher_metadata,
    save_teacher,
    state_dict_sha256,
    teacher_path,
    teachers_dir,
    train_command,
    verify_teacher,
)
from .training import PARTIAL_FORMAT, train_teacher

__all__ = [
    "LR_DECAY_AT",
    "PARTIAL_FORMAT",
    "POOLS",
    "TEACHER_FORMAT",
    "TEACHER_POOLS",
    "TEACHER_POOL_EPOCHS",
    "PoolSpec",
    "TeacherCheckpointError",
    "TeacherChecksumError",
    "TeacherMismatchError",
    "TeacherPermissionError",
    "TeacherNotFoundError",
    "TeacherRecipe",
    "accuracy_by_class_group",
    "default_recipe",
    "derangement",
    "ensure_pool",
    "ensure_teacher_pool",
    "evaluate_accuracy",
    "get_pool",
    "list_teachers",
    "load_teacher",
    "lr_for_epoch",
    "lr_milestones",
    "pool_members",
    "pool_train_command",
    "predict_classes",
    "read_teacher_metadata",
    "register_pool",
    "save_teacher",
    "specialist_groups",
    "state_dict_sha256",
    "teacher_path",
    "teachers_dir",
    "train_command",
    "train_pool_member",
    "train_teacher",
    "verify_teacher",
]
