fn main() -> std::process::ExitCode {
    taper::runtime::tune_process();
    match taper::runtime::on_pool(taper::cli::run) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            if let Some(interrupted) = err.downcast_ref::<taper::interrupt::Interrupted>() {
                taper::console::say(format!("taper: {interrupted}"));
                return std::process::ExitCode::from(interrupted.exit_code() as u8);
            }
            taper::console::say(format!("error: {err}"));
            for cause in err.chain().skip(1) {
                taper::console::say(format!("  caused by: {cause}"));
            }
            std::process::ExitCode::FAILURE
        }
    }
}
