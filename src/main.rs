fn main() {
    println!("posthaste");
}
