fn main() -> std::process::ExitCode {
    lmhost::cli::main()
}
