use std::process::ExitCode;

use clap::Parser;
use modelci::app::{self, Exit};
use modelci::cli::Cli;
use modelci::ui::Ui;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let ui = Ui::new(cli.quiet, cli.verbose);
    let exit = match app::execute(cli, &ui, &mut std::io::stdout().lock()) {
        Ok(exit) => exit,
        Err(error) => {
            eprintln!("{}", app::describe_error(&error));
            Exit::Error
        }
    };
    exit.into()
}
