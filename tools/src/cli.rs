//! What the tools' command lines share: options parsed with `lexopt`,
//! `-h`/`--help` printing the usage to stdout (exit 0), and a bad argument
//! printing the error and the usage to stderr (exit 2).

use std::process::ExitCode;

/// Parses the command line with `parse`, which returns `Ok(None)` when help
/// was asked for. Returns the parsed arguments, or the exit code the tool
/// should end with after the usage or the error has been printed.
pub(crate) fn parse<A>(
    tool: &str,
    usage: &str,
    parse: impl FnOnce(&mut lexopt::Parser) -> Result<Option<A>, lexopt::Error>,
) -> Result<A, ExitCode> {
    match parse(&mut lexopt::Parser::from_env()) {
        Ok(Some(args)) => Ok(args),
        Ok(None) => {
            println!("{usage}");
            Err(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{tool}: {e}\n\n{usage}");
            Err(ExitCode::from(2))
        }
    }
}

/// A positive count given to option `name`.
pub(crate) fn positive(name: &str, value: std::ffi::OsString) -> Result<usize, lexopt::Error> {
    let text = value.to_string_lossy();
    match text.parse() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{name}: {text:?} is not a positive number").into()),
    }
}
