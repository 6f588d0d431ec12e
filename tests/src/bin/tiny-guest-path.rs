//! Prints the path of the tiny test guest that tests/build.rs built (used by ./run.sh).

fn main() {
    println!("{}", env!("KILN_TINY_GUEST"));
}
