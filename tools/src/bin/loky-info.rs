fn main() { println!("{}", loky::cpu_count()); }
