//! Device choice, in one place, so CPU, CUDA and Metal runs share every other line of code.

use anyhow::{bail, Context, Result};
use candle_core::Device;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    Auto,
    Cpu,
    Cuda(usize),
    Metal,
}

pub fn parse_device_spec(spec: &str) -> Result<DeviceSpec> {
    Ok(match spec.trim() {
        "auto" => DeviceSpec::Auto,
        "cpu" => DeviceSpec::Cpu,
        "cuda" => DeviceSpec::Cuda(0),
        "metal" => DeviceSpec::Metal,
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => DeviceSpec::Cuda(n),
            _ => bail!("unknown device `{other}`: expected \"auto\", \"cpu\", \"cuda\", \"cuda:N\" or \"metal\""),
        },
    })
}

/// Opens the device a run asked for. `auto` takes CUDA, then Metal, when taper was built with
/// that feature and the hardware answers, and the CPU otherwise.
pub fn open_device(spec: &str) -> Result<Device> {
    match parse_device_spec(spec)? {
        DeviceSpec::Cpu => Ok(Device::Cpu),
        DeviceSpec::Cuda(n) => {
            if !candle_core::utils::cuda_is_available() {
                bail!("device `{spec}` asked for, but taper was built without `--features cuda`");
            }
            Device::new_cuda(n).with_context(|| format!("cannot open CUDA device {n}"))
        }
        DeviceSpec::Metal => {
            if !candle_core::utils::metal_is_available() {
                bail!("device `metal` asked for, but taper was built without `--features metal`");
            }
            Device::new_metal(0).context("cannot open the Metal device")
        }
        DeviceSpec::Auto => {
            if candle_core::utils::cuda_is_available() {
                if let Ok(device) = Device::new_cuda(0) {
                    return Ok(device);
                }
            }
            if candle_core::utils::metal_is_available() {
                if let Ok(device) = Device::new_metal(0) {
                    return Ok(device);
                }
            }
            Ok(Device::Cpu)
        }
    }
}

/// How many CUDA devices answer: 0 in a build without CUDA, or on a machine without a driver.
pub fn cuda_device_count() -> usize {
    #[cfg(feature = "cuda")]
    return candle_core::cuda::cudarc::driver::CudaContext::device_count().map_or(0, |n| n.max(0) as usize);
    #[cfg(not(feature = "cuda"))]
    0
}

/// The GPU's name as its driver gives it ("NVIDIA H100 80GB HBM3"); `None` off CUDA.
pub fn gpu_name(device: &Device) -> Option<String> {
    match device {
        #[cfg(feature = "cuda")]
        Device::Cuda(cuda) => cuda.cuda_stream().context().name().ok(),
        _ => None,
    }
}

pub fn describe(device: &Device) -> String {
    match device {
        Device::Cpu => format!("cpu ({} threads)", candle_core::utils::get_num_threads()),
        Device::Cuda(_) => gpu_name(device).map_or("cuda".into(), |name| format!("cuda ({name})")),
        Device::Metal(_) => "metal".into(),
    }
}
