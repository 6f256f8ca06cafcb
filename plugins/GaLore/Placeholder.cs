namespace Peft.Plugins.GaLore; public sealed class Placeholder {}
