fn main() -> std::process::ExitCode {
    taper::runtime::tune_process();
    match taper::runtime::on_pool(taper::cli::run) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}
