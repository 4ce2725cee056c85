"""livelab kernelspecs: the ``livelab`` kernel (data in ``kernels/livelab/``) and its installer.

The kernelspec pins the interpreter of the project's environment (so JupyterLab, papermill,
nbgrader and Voila all run learners' code with the packages the lab needs) and gives the kernel a
default state directory through ``LIVELAB_DEFAULT_HOME``, which a caller's own ``LIVELAB_HOME``
overrides.  Install it with ``python -m kernels install`` (``make setup`` does).
"""

from kernels.install import KERNEL_NAME, install, spec_dir

__all__ = ["KERNEL_NAME", "install", "spec_dir"]
