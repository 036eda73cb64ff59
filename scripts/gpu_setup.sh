# Sourced by scripts/gpu_check.sh and scripts/gpu_arms.sh on a GPU machine: unpacks
# what scripts/gpu_pack.sh put in DIR ($1, default .gpu: gnno.gz and stages.gz, the
# release and bench binaries, stripped and gzipped since the device tool carries
# 64 MiB at most; Beauty.txt; built_in, the checkout the bench was built in) and sets
# $root, $pack, $out, $bin. On the device machine libtorch comes from its own
# PyTorch, so this script (not users) sets LD_LIBRARY_PATH to that torch's lib folder.
root="$(cd "$(dirname "$0")/.." && pwd)"
pack="$(cd "${1:-$root/.gpu}" && pwd)"
out="${OUT:-/tmp/gnno-gpu-check}"
mkdir -p "$out"
gunzip -c "$pack/gnno.gz" > /tmp/gnno && chmod +x /tmp/gnno
gunzip -c "$pack/stages.gz" > /tmp/stages && chmod +x /tmp/stages
bin=/tmp/gnno
# The configs read ../shared/data beside the checkout; the bench binary reads the
# paths it was built with (its checkout and the shared folder beside it).
place_beauty() {
  mkdir -p "$1/data/s3rec" && cp -f "$pack/Beauty.txt" "$1/data/s3rec/Beauty.txt" ||
    { echo "error: cannot place Beauty.txt under $1" >&2; exit 1; }
}
place_beauty "$root/../shared"
built="$(cat "$pack/built_in")"
if [ ! -e "$built" ]; then
  mkdir -p "$(dirname "$built")" && ln -s "$root" "$built" ||
    { echo "error: cannot link $built to $root (the bench's baked-in paths)" >&2; exit 1; }
fi
place_beauty "$built/../shared"
torch_lib=$(python3 -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# The binaries must link libtorch_cuda (build.rs), or libtorch sees no GPU.
for b in /tmp/gnno /tmp/stages; do
  readelf -d "$b" | grep -q 'NEEDED.*libtorch_cuda' || { echo "error: $b does not link libtorch_cuda (built against a CPU-only libtorch?)" >&2; exit 1; }
done
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")'
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
