//! A line diff in the unified format (`-` on disk, `+` what the install writes), for the
//! plan of a file someone edited: the person sees what would be lost before anything is.
//!
//! The files are config files of a few hundred lines, so the longest common subsequence is
//! computed with the plain quadratic table; past `MAX_CELLS` the diff is not computed and
//! the plan says so instead.

/// Lines of context around each change.
const CONTEXT: usize = 3;
/// Above this many table cells (lines × lines) no diff is computed.
const MAX_CELLS: usize = 4_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Same,
    Del,
    Add,
}

/// `old` → `new` as unified-diff lines (with `--- `/`+++ ` headers and `@@` hunks), or a one-line
/// note when the files are too long to compare here. Empty when they are the same.
pub fn unified(old: &str, new: &str, old_label: &str, new_label: &str) -> String {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    if a == b {
        return String::new();
    }
    if (a.len() + 1).saturating_mul(b.len() + 1) > MAX_CELLS {
        return format!("({} and {} lines: too long to show the difference here)\n", a.len(), b.len());
    }
    let ops = script(&a, &b);
    let mut out = format!("--- {old_label}\n+++ {new_label}\n");
    // Positions (in `ops`) of the changes, grouped into hunks that share context.
    let changed: Vec<usize> = (0..ops.len()).filter(|&i| ops[i].0 != Op::Same).collect();
    let mut i = 0;
    while i < changed.len() {
        let start = changed[i].saturating_sub(CONTEXT);
        let mut end = changed[i];
        while i < changed.len() && changed[i] <= end + 2 * CONTEXT {
            end = changed[i];
            i += 1;
        }
        let end = (end + CONTEXT + 1).min(ops.len());
        let hunk = &ops[start..end];
        let (a0, b0) = (ops[start].1, ops[start].2);
        let a_len = hunk.iter().filter(|o| o.0 != Op::Add).count();
        let b_len = hunk.iter().filter(|o| o.0 != Op::Del).count();
        // An empty side is named by the line before it (0 at the top), as diff(1) does.
        let first = |at: usize, len: usize| if len == 0 { at } else { at + 1 };
        out += &format!("@@ -{},{a_len} +{},{b_len} @@\n", first(a0, a_len), first(b0, b_len));
        for (op, ai, bi) in hunk {
            out += &match op {
                Op::Same => format!(" {}\n", a[*ai]),
                Op::Del => format!("-{}\n", a[*ai]),
                Op::Add => format!("+{}\n", b[*bi]),
            };
        }
    }
    out
}

/// The edit script: each step with the index in `a` and in `b` it is at.
fn script(a: &[&str], b: &[&str]) -> Vec<(Op, usize, usize)> {
    let (n, m) = (a.len(), b.len());
    // lcs[i][j]: length of the longest common subsequence of a[i..] and b[j..].
    let mut lcs = vec![0u32; (n + 1) * (m + 1)];
    let at = |i: usize, j: usize| i * (m + 1) + j;
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[at(i, j)] = if a[i] == b[j] {
                lcs[at(i + 1, j + 1)] + 1
            } else {
                lcs[at(i + 1, j)].max(lcs[at(i, j + 1)])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut ops = Vec::with_capacity(n + m);
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            ops.push((Op::Same, i, j));
            i += 1;
            j += 1;
        } else if i < n && (j == m || lcs[at(i + 1, j)] >= lcs[at(i, j + 1)]) {
            // Deletions first on a tie: the old line, then what replaces it.
            ops.push((Op::Del, i, j));
            i += 1;
        } else {
            ops.push((Op::Add, i, j));
            j += 1;
        }
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_edited_lines_with_context() {
        let old: String = (1..=20).map(|i| format!("line {i}\n")).collect();
        let new = old.replace("line 5\n", "line five\n").replace("line 18\n", "");
        let d = unified(&old, &new, "a", "b");
        assert_eq!(
            d,
            "--- a\n+++ b\n\
             @@ -2,7 +2,7 @@\n line 2\n line 3\n line 4\n-line 5\n+line five\n line 6\n line 7\n line 8\n\
             @@ -15,6 +15,5 @@\n line 15\n line 16\n line 17\n-line 18\n line 19\n line 20\n"
        );
        assert_eq!(unified(&old, &old, "a", "b"), "");
        assert_eq!(unified("", "x\n", "a", "b"), "--- a\n+++ b\n@@ -0,0 +1,1 @@\n+x\n");
    }
}
