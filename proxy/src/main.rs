//! deploy-proxy (to come: relays orders to many agents).
fn main() {
    eprintln!("deploy-proxy: not yet implemented");
    std::process::exit(2);
}
