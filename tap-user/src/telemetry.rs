//! Counter sets: plain `u64` fields owned by one thread, merged for reports. Every dropped,
//! evicted, gapped, reordered or duplicated item has a field here.

/// Declares a counter struct with `merge` and `rows` (name, value) in declaration order.
#[macro_export]
macro_rules! counter_set {
    ($(#[$meta:meta])* pub struct $name:ident { $($(#[$fmeta:meta])* $field:ident,)* }) => {
        $(#[$meta])*
        #[derive(Clone, Debug, Default, PartialEq, Eq)]
        pub struct $name {
            $($(#[$fmeta])* pub $field: u64,)*
        }

        impl $name {
            pub fn merge(&mut self, other: &Self) {
                $(self.$field += other.$field;)*
            }

            pub fn rows(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($field), self.$field),)*]
            }
        }
    };
}

/// Writes `prefix_name value` lines, the format of every sensor report.
pub fn write_rows(out: &mut impl std::io::Write, prefix: &str, rows: &[(&'static str, u64)]) -> std::io::Result<()> {
    for (name, value) in rows {
        let name = if prefix.is_empty() { name.to_string() } else { format!("{prefix}_{name}") };
        writeln!(out, "{name:<34}{value:>14}")?;
    }
    Ok(())
}
