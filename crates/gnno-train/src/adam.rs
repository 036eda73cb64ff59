//! Adam with L2 weight decay on every parameter but biases (PyTorch `Adam` with
//! `weight_decay`, which adds wd·p to the gradient). Written out here rather than
//! taken from tch so its state (moments, step) can be checkpointed and a resumed
//! run continues exactly where it stopped.

use tch::{Kind, Tensor};

pub struct Adam {
    params: Vec<(String, Tensor)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    pub step: i64,
    lr: f64,
    wd: f64,
    b1: f64,
    b2: f64,
    eps: f64,
}

impl Adam {
    /// `params` are sorted by name so the state layout is stable.
    pub fn new(mut params: Vec<(String, Tensor)>, lr: f64, wd: f64) -> Self {
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let m = params.iter().map(|(_, p)| p.zeros_like()).collect();
        let v = params.iter().map(|(_, p)| p.zeros_like()).collect();
        Self {
            params,
            m,
            v,
            step: 0,
            lr,
            wd,
            b1: 0.9,
            b2: 0.999,
            eps: 1e-8,
        }
    }

    pub fn zero_grad(&mut self) {
        for (_, p) in &mut self.params {
            p.zero_grad();
        }
    }

    pub fn step(&mut self) {
        self.step += 1;
        #[expect(clippy::cast_possible_truncation, reason = "step counts are small")]
        let t = self.step as i32;
        let bc1 = 1.0 - self.b1.powi(t);
        let bc2 = 1.0 - self.b2.powi(t);
        tch::no_grad(|| {
            for (k, (name, p)) in self.params.iter_mut().enumerate() {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let g = if self.wd > 0.0 && !name.ends_with("bias") {
                    g + &*p * self.wd
                } else {
                    g
                };
                let _ = self.m[k].g_mul_scalar_(self.b1);
                let _ = self.m[k].g_add_(&(&g * (1.0 - self.b1)));
                let _ = self.v[k].g_mul_scalar_(self.b2);
                let _ = self.v[k].g_add_(&(&g * &g * (1.0 - self.b2)));
                let denom = (&self.v[k] / bc2).sqrt() + self.eps;
                let upd = &self.m[k] / bc1 / denom * self.lr;
                let _ = p.g_sub_(&upd);
            }
        });
    }

    /// Named state tensors for a checkpoint.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![("adam.step".to_owned(), Tensor::from(self.step))];
        for (k, (name, _)) in self.params.iter().enumerate() {
            out.push((format!("adam.m.{name}"), self.m[k].shallow_clone()));
            out.push((format!("adam.v.{name}"), self.v[k].shallow_clone()));
        }
        out
    }

    /// Restore from checkpoint tensors (missing entries leave zeros).
    pub fn restore(&mut self, named: &[(String, Tensor)]) {
        let find = |n: &str| named.iter().find(|(k, _)| k == n).map(|(_, t)| t);
        if let Some(s) = find("adam.step") {
            self.step = s.int64_value(&[]);
        }
        tch::no_grad(|| {
            for (k, (name, _)) in self.params.iter().enumerate() {
                if let Some(t) = find(&format!("adam.m.{name}")) {
                    let src = t.to_kind(Kind::Float).to_device(self.m[k].device());
                    self.m[k].copy_(&src);
                }
                if let Some(t) = find(&format!("adam.v.{name}")) {
                    let src = t.to_kind(Kind::Float).to_device(self.v[k].device());
                    self.v[k].copy_(&src);
                }
            }
        });
    }
}
