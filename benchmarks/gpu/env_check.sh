# Environment check for the device machine (first call): versions, GPUs, topology, quick loops.
source benchmarks/gpu/device_env.sh
nvidia-smi; nvidia-smi topo -m; nproc; numactl -H; which numactl
python3 -c "import torch,torchvision,pynvml,h5py,jsonschema,submitit;print(torch.__version__,torchvision.__version__,torch.cuda.device_count(),torch.version.cuda,torch.backends.cudnn.version())"
B=benchmarks/gpu
python3 $B/bare_loop.py --cuda-graph --seconds 8 --no-copy
python3 $B/bare_loop.py --cuda-graph --seconds 8
python3 $B/engine_loop.py --cuda-graph --seconds 8 --gpus 0
python3 $B/engine_loop.py --cuda-graph --seconds 8 --gpus 0,1
python3 $B/engine_loop.py --model bert_base --batch 256 --cuda-graph --seconds 5 --gpus 0
python3 $B/engine_loop.py --model alexnet --batch 1024 --cuda-graph --seconds 5 --gpus 0
