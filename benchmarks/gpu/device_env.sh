# Sourced by the GPU scripts, from the repository root, on the GPU machine: packages its Python
# lacks (e.g. jsonschema, submitit) travel as wheels in .whl/ (made beforehand with
# `pip download --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 -d .whl`)
# and are installed to /tmp/site first; hpcbench runs from this checkout.
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1
# NVLink multicast stays off on these shared machines (device README).
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
