use clap::Parser;

fn main() {
    let cli = posthaste::cli::Cli::parse();
    if let Err(e) = posthaste::cli::run(cli) {
        // What went wrong and why first, what to do about it last.
        let top = e.to_string();
        let (message, help) = match top.split_once("\nhelp: ") {
            Some((m, h)) => (m.to_owned(), Some(h.to_owned())),
            None => (top, None),
        };
        eprintln!("error: {message}");
        for cause in e.chain().skip(1) {
            eprintln!("  caused by: {cause}");
        }
        if let Some(help) = help {
            eprintln!("help: {help}");
        }
        std::process::exit(1);
    }
}
