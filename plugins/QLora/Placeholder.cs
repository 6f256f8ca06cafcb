namespace Peft.Plugins.QLora; public sealed class Placeholder {}
