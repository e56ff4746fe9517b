"""Builds the kvcodec Python module with the project's CMake (target kvcodec_python, -DKVCODEC_PYTHON=ON) for the
interpreter running pip, and installs python/kvcodec with it. Nothing is downloaded: pybind11, the compiler and
the library's dependencies come from Debian (scripts/setup --deps). Parallel jobs: CMAKE_BUILD_PARALLEL_LEVEL
(default: all cores)."""
import os
import shutil
import subprocess
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))
os.makedirs(os.path.join(ROOT, "build-pip"), exist_ok=True)  # setuptools needs egg_base to exist


class CMakeExtension(Extension):
    def __init__(self, name):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        build = os.path.join(os.path.abspath(self.build_temp), "cmake")
        os.makedirs(build, exist_ok=True)
        cfg = [
            "cmake", "-S", ROOT, "-B", build, "-DCMAKE_BUILD_TYPE=Release", f"-DPython_EXECUTABLE={sys.executable}",
            "-DKVCODEC_PYTHON=ON", "-DKVCODEC_BUILD_TESTS=OFF", "-DKVCODEC_BUILD_CLI=OFF", "-DKVCODEC_BUILD_BENCH=OFF",
            "-DKVCODEC_BUILD_EXAMPLES=OFF", "-DKVCODEC_HEADER_CHECK=OFF", "-DKVCODEC_CUDA=OFF",
        ]
        if shutil.which("ninja"):
            cfg += ["-G", "Ninja"]
        subprocess.run(cfg, check=True)
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 1))
        subprocess.run(["cmake", "--build", build, "--target", "kvcodec_python", "-j", jobs], check=True)
        built = os.path.join(build, "python", "kvcodec")
        so = [f for f in os.listdir(built) if f.startswith("_kvcodec") and f.endswith(".so")]
        if len(so) != 1:
            raise RuntimeError(f"kvcodec: expected one _kvcodec*.so in {built}, found {so}")
        dest = self.get_ext_fullpath(ext.name)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        shutil.copyfile(os.path.join(built, so[0]), dest)


setup(
    packages=["kvcodec"],
    package_dir={"": "python"},
    ext_modules=[CMakeExtension("kvcodec._kvcodec")],
    cmdclass={"build_ext": CMakeBuild},
    # setuptools' default build directory is ./build, which is the project's CMake build directory
    options={"build": {"build_base": "build-pip"}, "egg_info": {"egg_base": "build-pip"}},
    zip_safe=False,
)
