use clap::Parser;

fn main() {
    let cli = posthaste::cli::Cli::parse();
    if let Err(e) = posthaste::cli::run(cli) {
        eprintln!("error: {e}");
        for cause in e.chain().skip(1) {
            eprintln!("  caused by: {cause}");
        }
        std::process::exit(1);
    }
}
