//! How rust-dest is controlled: `-qmp`, and `-chardev` + `-mon
//! chardev=ID,mode=control` as management stacks write it (a unix or TCP
//! socket, or an inherited descriptor `fd=N`). A chardev that a monitor uses
//! is honoured or refused, never ignored; other chardevs (serial consoles)
//! are accepted with a warning. Texts follow QEMU's `chardev/char-socket.c`
//! and `monitor/monitor.c`, verified on the 10.0 binary.

use super::props::Props;
use super::CliError;

/// Properties QEMU's socket chardev takes.
const SOCKET_PROPS: &[&str] = &[
    "backend",
    "id",
    "path",
    "host",
    "port",
    "to",
    "ipv4",
    "ipv6",
    "fd",
    "server",
    "wait",
    "telnet",
    "tn3270",
    "websocket",
    "reconnect",
    "reconnect-ms",
    "nodelay",
    "tls-creds",
    "tls-authz",
    "abstract",
    "tight",
    "logfile",
    "logappend",
    "mux",
    "delay",
    "keep-alive",
];

/// One `-chardev`.
#[derive(Clone, Debug)]
pub struct Chardev {
    pub id: String,
    pub backend: String,
    props: Props,
}

pub fn parse_chardev(arg: &str) -> Result<Chardev, CliError> {
    let p = Props::parse("chardev", arg, Some("backend"))?;
    let backend = p.req_str("backend")?;
    let id = p.req_str("id")?;
    if backend == "socket" {
        p.only(SOCKET_PROPS)?;
        if !p.has("path") && !p.has("port") && !p.has("fd") {
            return Err(p.err("chardev: socket: no host given"));
        }
        if let Some(fd) = p.str("fd")? {
            fd.parse::<i32>()
                .ok()
                .filter(|n| *n >= 0)
                .ok_or_else(|| p.err(format!("Unable to parse FD number {fd}")))?;
        }
        p.bool("server")?;
        p.bool("wait")?;
    }
    Ok(Chardev { id, backend, props: p })
}

/// One `-mon`.
#[derive(Clone, Debug)]
pub struct Mon {
    opt: String,
    chardev: String,
}

pub fn parse_mon(arg: &str) -> Result<Mon, CliError> {
    let p = Props::parse("mon", arg, Some("chardev"))?;
    p.only(&["chardev", "mode", "pretty", "id", "default"])?;
    let chardev = p.req_str("chardev")?;
    match p.choice("mode", &["readline", "control"])?.as_deref() {
        Some("control") => {}
        // QEMU's default mode is readline (HMP).
        _ => {
            return Err(p.err(
                "rust-dest serves QMP only: a readline (HMP) monitor is not supported, use mode=control",
            ))
        }
    }
    p.bool("pretty")?;
    Ok(Mon { opt: p.opt.clone(), chardev })
}

/// `-monitor`: QEMU's HMP monitor. Only `none` is accepted.
pub fn check_monitor(arg: &str) -> Result<(), CliError> {
    if arg == "none" {
        return Ok(());
    }
    Err(CliError::arg(
        &format!("-monitor {arg}"),
        "rust-dest serves QMP only: use -qmp or -chardev with -mon mode=control",
    ))
}

fn esc(s: &str) -> String {
    s.replace(',', ",,")
}

/// The `-qmp`-style spec of each monitor's chardev (what `qmp::spawn`
/// serves), with the `-chardev` option it came from. Chardevs no monitor
/// uses get one warning each.
pub fn resolve(
    chardevs: &[Chardev],
    mons: &[Mon],
    warnings: &mut Vec<String>,
) -> Result<Vec<(String, String)>, CliError> {
    let mut specs = Vec::new();
    for m in mons {
        let c = chardevs
            .iter()
            .find(|c| c.id == m.chardev)
            .ok_or_else(|| CliError::arg(&m.opt, format!("chardev \"{}\" not found", m.chardev)))?;
        if c.backend != "socket" {
            return Err(CliError::arg(
                &c.props.opt,
                format!(
                    "a monitor on a '{}' chardev is not supported by rust-dest (use a socket)",
                    c.backend
                ),
            ));
        }
        let p = &c.props;
        for key in ["telnet", "tn3270", "websocket", "mux"] {
            if p.bool(key)? == Some(true) {
                return Err(p.err(format!("{key}=on is not supported for a QMP monitor")));
            }
        }
        if p.has("tls-creds") {
            return Err(p.err("TLS QMP monitors are not supported by rust-dest"));
        }
        let mut spec = if let Some(fd) = p.str("fd")? {
            format!("fd:{fd}")
        } else if let Some(path) = p.str("path")? {
            format!("unix:{}", esc(&path))
        } else {
            let host = p.str("host")?.unwrap_or_default();
            let host = if host.contains(':') { format!("[{host}]") } else { host };
            format!("tcp:{}:{}", esc(&host), p.req_str("port")?)
        };
        let server = p.bool("server")?.unwrap_or(false);
        if server {
            spec.push_str(",server=on");
            if let Some(w) = p.bool("wait")? {
                spec.push_str(if w { ",wait=on" } else { ",wait=off" });
            }
        } else if p.has("wait") {
            return Err(p.err("'wait' option is incompatible with socket in client connect mode"));
        }
        if p.bool("abstract")? == Some(true) {
            spec.push_str(",abstract=on");
        }
        specs.push((spec, p.opt.clone()));
    }
    for c in chardevs.iter().filter(|c| !mons.iter().any(|m| m.chardev == c.id)) {
        warnings.push(format!("{}: not used by a monitor, ignored", c.props.opt));
    }
    Ok(specs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(chardevs: &[&str], mons: &[&str]) -> Result<Vec<String>, String> {
        let c: Vec<_> = chardevs
            .iter()
            .map(|a| parse_chardev(a))
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?;
        let m: Vec<_> = mons
            .iter()
            .map(|a| parse_mon(a))
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?;
        resolve(&c, &m, &mut Vec::new())
            .map(|v| v.into_iter().map(|(spec, _)| spec).collect())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn libvirt_monitor() {
        assert_eq!(
            run(
                &[
                    "socket,id=charmonitor,path=/run/a,,b.sock,server=on,wait=off",
                    "pty,id=charserial0"
                ],
                &["chardev=charmonitor,id=monitor,mode=control"]
            )
            .unwrap(),
            vec!["unix:/run/a,,b.sock,server=on,wait=off"]
        );
        assert_eq!(
            run(&["socket,id=m,fd=7,server=on,wait=off"], &["chardev=m,mode=control"]).unwrap(),
            vec!["fd:7,server=on,wait=off"]
        );
        assert_eq!(
            run(
                &["socket,id=m,host=::1,port=4000,server=on,wait=off"],
                &["chardev=m,mode=control"]
            )
            .unwrap(),
            vec!["tcp:[::1]:4000,server=on,wait=off"]
        );
    }

    #[test]
    fn refusals() {
        assert_eq!(
            run(&[], &["chardev=nope,mode=control"]).unwrap_err(),
            "-mon chardev=nope,mode=control: chardev \"nope\" not found"
        );
        assert_eq!(
            run(&[], &["mode=control"]).unwrap_err(),
            "-mon mode=control: Parameter 'chardev' is missing"
        );
        assert!(run(&[], &["chardev=x,mode=bogus"])
            .unwrap_err()
            .ends_with("Parameter 'mode' does not accept value 'bogus'"));
        assert!(run(&["socket,id=x,path=/a"], &["chardev=x"]).unwrap_err().contains("HMP"));
        assert!(run(&["pty,id=x"], &["chardev=x,mode=control"]).unwrap_err().contains("'pty'"));
        assert!(run(&["socket,id=x,path=/a,bogus=1"], &[])
            .unwrap_err()
            .ends_with("Invalid parameter 'bogus'"));
        assert!(check_monitor("stdio").is_err() && check_monitor("none").is_ok());
    }
}
