"""The optional compiled step (``gevwire._speedups``); everything else is in pyproject.toml.

Built with Cython when a C compiler is at hand; where the build fails (no compiler, no
Python headers) the install goes on without it and gevwire runs its pure-Python path.
"""

from setuptools import Extension, setup

try:
    from Cython.Build import cythonize
except ImportError:  # (pip installs Cython for the build: see pyproject's build-system)
    extensions = []
else:
    extensions = cythonize(
        [Extension("gevwire._speedups", ["gevwire/_speedups.pyx"], optional=True)],
        language_level=3, quiet=True)

setup(ext_modules=extensions)
